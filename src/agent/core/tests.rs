//! The agent core, asserted on the exact steps it asks for.

use super::*;
use crate::cluster::wire::WalReceiver;
use crate::cluster::Lsn;

fn upstream(node: &str) -> Upstream {
    Upstream {
        node: node.into(),
        host: format!("10.0.0.{}", &node[1..]),
        port: 5432,
    }
}

fn command(epoch: u64, action: Action) -> AgentCommand {
    AgentCommand {
        id: 1,
        epoch,
        action,
    }
}

fn valid(clean: bool, standby: bool) -> DataDirState {
    DataDirState::Valid {
        system_identifier: 7,
        timeline: 1,
        standby,
        clean_shutdown: clean,
        checkpoint_lsn: Lsn(0),
    }
}

fn pg(in_recovery: bool, streaming_from: Option<&str>) -> PgStatus {
    PgStatus {
        in_recovery,
        wal_receiver: streaming_from.map(|n| WalReceiver {
            status: "streaming".into(),
            sender_host: upstream(n).host,
            sender_port: 5432,
        }),
        ..PgStatus::default()
    }
}

/// Drive `exec` to the end: every step, with `answer` giving outcomes
/// (`Look` answered with `facts`).
fn run(
    mut exec: Execution,
    facts: &Facts,
    mut answer: impl FnMut(&Step) -> Outcome,
) -> (Vec<Step>, Result<String, String>) {
    let mut steps = Vec::new();
    for _ in 0..200 {
        let step = exec.next_step();
        if let Step::Done(r) = step {
            return (steps, r);
        }
        let outcome = match &step {
            Step::Look => Outcome::Looked(Box::new(facts.clone())),
            other => answer(other),
        };
        steps.push(step);
        exec.outcome(outcome);
    }
    panic!("no end: {steps:?}");
}

fn ok(_: &Step) -> Outcome {
    Outcome::Ok
}

fn position(steps: &[Step], want: impl Fn(&Step) -> bool) -> usize {
    steps
        .iter()
        .position(want)
        .unwrap_or_else(|| panic!("missing step in {steps:?}"))
}

#[test]
fn stale_epochs_are_refused_and_newer_ones_persisted_first() {
    let facts = Facts {
        epoch: 5,
        ..Facts::default()
    };
    let (steps, r) = run(Execution::new(command(4, Action::Demote)), &facts, ok);
    assert_eq!(steps, vec![Step::Look]);
    assert_eq!(r, Err("stale epoch 4: this node has seen epoch 5".into()));
    let (steps, _) = run(Execution::new(command(6, Action::Demote)), &facts, ok);
    assert_eq!(steps[1], Step::Persist(Change::Epoch(6)));
}

#[test]
fn a_promised_node_is_not_made_writable() {
    let facts = Facts {
        epoch: 1,
        holdoff_ms: 900,
        ..Facts::default()
    };
    let promote = Action::Promote {
        settings: ManagedSettings::default(),
    };
    let (steps, r) = run(Execution::new(command(2, promote)), &facts, ok);
    assert_eq!(steps, vec![Step::Look]);
    assert!(r.unwrap_err().contains("promised"));
    // Following is fine.
    let follow = Action::Follow {
        upstream: upstream("n2"),
        settings: ManagedSettings::default(),
        reclone: true,
    };
    let (_, r) = run(Execution::new(command(2, follow)), &facts, ok);
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn promotion_waits_for_the_lease_and_sets_sync_names_first() {
    let facts = Facts {
        epoch: 1,
        running: true,
        postgres: Some(pg(true, Some("n1"))),
        ..Facts::default()
    };
    let settings = ManagedSettings {
        synchronous_standby_names: "FIRST 1 (n3)".into(),
        ..ManagedSettings::default()
    };
    let (steps, r) = run(
        Execution::new(command(
            2,
            Action::Promote {
                settings: settings.clone(),
            },
        )),
        &facts,
        ok,
    );
    assert_eq!(r, Ok("promoted".into()));
    let promote = position(&steps, |s| *s == Step::Promote);
    let written = position(
        &steps,
        |s| matches!(s, Step::WriteConfig { settings: w, upstream: None } if *w == settings),
    );
    let reload = position(&steps, |s| *s == Step::Reload);
    assert!(written < reload && reload < promote, "{steps:?}");
    assert_eq!(steps[promote - 1], Step::AwaitLease, "{steps:?}");
    assert_eq!(steps[2], Step::AwaitLease, "{steps:?}");
    // A running, supervised standby: one look at the start of the command,
    // one after the lease — each costs a connection during the outage.
    let looks = steps.iter().filter(|s| **s == Step::Look).count();
    assert_eq!(looks, 2, "{steps:?}");
    // No lease: nothing after the refusal.
    let (steps, r) = run(
        Execution::new(command(2, Action::Promote { settings })),
        &facts,
        |s| match s {
            Step::AwaitLease => Outcome::Failed("no valid lease".into()),
            _ => Outcome::Ok,
        },
    );
    assert_eq!(r, Err("no valid lease".into()));
    assert!(!steps.contains(&Step::Promote));
}

#[test]
fn a_writable_node_told_to_follow_is_fenced_before_its_lease_goes() {
    let facts = Facts {
        epoch: 1,
        running: true,
        intent: Intent::Primary,
        postgres: Some(pg(false, None)),
        data: valid(false, false),
        ..Facts::default()
    };
    let follow = Action::Follow {
        upstream: upstream("n2"),
        settings: ManagedSettings::default(),
        reclone: true,
    };
    let (steps, r) = run(Execution::new(command(2, follow)), &facts, |s| match s {
        Step::Rewind(_) => Outcome::Rewound(RewindOutcome::Rewound),
        _ => Outcome::Ok,
    });
    assert_eq!(r, Ok("rewound from n2".into()));
    let fence = position(&steps, |s| *s == Step::Fence);
    let release = position(&steps, |s| *s == Step::ReleaseLease);
    assert!(fence < release, "{steps:?}");
    // Crash recovery before the rewind, standby before the start.
    let recover = position(&steps, |s| *s == Step::CrashRecover);
    let rewind = position(&steps, |s| matches!(s, Step::Rewind(_)));
    let standby = position(&steps, |s| *s == Step::SetStandby(true));
    let start = position(&steps, |s| *s == Step::Start);
    assert!(
        recover < rewind && rewind < standby && standby < start,
        "{steps:?}"
    );
}

#[test]
fn a_valid_copy_is_never_wiped_when_the_source_is_unreachable() {
    let facts = Facts {
        epoch: 2,
        data: valid(true, true),
        ..Facts::default()
    };
    let follow = |reclone| Action::Follow {
        upstream: upstream("n2"),
        settings: ManagedSettings::default(),
        reclone,
    };
    let rewind_fails = |reachable: bool| {
        move |s: &Step| match s {
            Step::Rewind(_) => Outcome::Failed("could not find common ancestor".into()),
            Step::IsReachable(_) => {
                if reachable {
                    Outcome::Yes
                } else {
                    Outcome::No
                }
            }
            _ => Outcome::Ok,
        }
    };
    // A former primary's copy (no standby.signal) stays down.
    let primary_copy = Facts {
        data: valid(true, false),
        ..facts.clone()
    };
    for reclone in [true, false] {
        let (steps, r) = run(
            Execution::new(command(2, follow(reclone))),
            &primary_copy,
            rewind_fails(false),
        );
        assert!(r.unwrap_err().contains(if reclone {
            "unreachable: keeping the data directory"
        } else {
            "re-cloning is off"
        }));
        assert!(!steps.contains(&Step::Wipe), "{steps:?}");
        assert!(!steps.contains(&Step::Start), "{steps:?}");
    }
    // A replica's copy whose source is out of reach runs again as a
    // standby of it, untouched (no rewind, no crash recovery), so that it
    // stays a candidate should the source be gone for good.
    for clean in [true, false] {
        let replica_copy = Facts {
            data: valid(clean, true),
            ..facts.clone()
        };
        let (steps, r) = run(
            Execution::new(command(2, follow(true))),
            &replica_copy,
            rewind_fails(false),
        );
        assert!(
            r.as_ref()
                .is_ok_and(|m| m.contains("runs as a replica waiting for n2")),
            "{r:?}"
        );
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, Step::Rewind(_) | Step::CrashRecover | Step::Wipe)),
            "{steps:?}"
        );
        let standby = position(&steps, |s| *s == Step::SetStandby(true));
        let start = position(&steps, |s| *s == Step::Start);
        assert!(standby < start, "{steps:?}");
    }
    // Reachable when asked, gone once the rewind failed: the rewind may
    // have stopped half-way, so the copy stays down (never started, never
    // wiped).
    let mut asked = 0;
    let (steps, r) = run(
        Execution::new(command(2, follow(true))),
        &facts,
        |s: &Step| match s {
            Step::Rewind(_) => Outcome::Failed("source went away".into()),
            Step::IsReachable(_) => {
                asked += 1;
                if asked == 1 {
                    Outcome::Yes
                } else {
                    Outcome::No
                }
            }
            _ => Outcome::Ok,
        },
    );
    assert!(r
        .unwrap_err()
        .contains("unreachable: keeping the data directory"));
    assert!(!steps.contains(&Step::Start), "{steps:?}");
    assert!(!steps.contains(&Step::Wipe), "{steps:?}");
    // Reachable: wiped and cloned again.
    let (steps, r) = run(
        Execution::new(command(2, follow(true))),
        &facts,
        rewind_fails(true),
    );
    assert!(r.unwrap().contains("cloned again from n2"));
    let wipe = position(&steps, |s| *s == Step::Wipe);
    let clone = position(&steps, |s| matches!(s, Step::Clone(_)));
    assert!(wipe < clone);
    // Re-cloning off: the failure stands, nothing is wiped.
    let (steps, r) = run(
        Execution::new(command(2, follow(false))),
        &facts,
        rewind_fails(true),
    );
    assert!(r.unwrap_err().contains("re-cloning is off"));
    assert!(!steps.contains(&Step::Wipe));
}

#[test]
fn a_server_that_runs_but_does_not_answer_is_stopped_before_rejoining() {
    // Found by the simulation (seed 133): an agent restarted while its
    // replica was still starting went straight to rewind and re-clone
    // under the running server, and failed every retry.
    let facts = Facts {
        epoch: 2,
        running: true,
        intent: Intent::Replica,
        upstream: Some(upstream("n1")),
        data: valid(false, true),
        ..Facts::default()
    };
    let follow = Action::Follow {
        upstream: upstream("n1"),
        settings: ManagedSettings::default(),
        reclone: true,
    };
    let (steps, r) = run(Execution::new(command(2, follow)), &facts, |s| match s {
        Step::Rewind(_) => Outcome::Rewound(RewindOutcome::NotNeeded),
        Step::IsReachable(_) => Outcome::Yes,
        _ => Outcome::Ok,
    });
    assert_eq!(r, Ok("following n1".into()));
    let stop = position(&steps, |s| *s == Step::StopFast);
    let recover = position(&steps, |s| *s == Step::CrashRecover);
    let start = position(&steps, |s| *s == Step::Start);
    assert!(stop < recover && recover < start, "{steps:?}");
    assert!(!steps.contains(&Step::Wipe), "{steps:?}");
}

#[test]
fn a_replica_is_re_pointed_by_a_reload_when_it_can() {
    let facts = Facts {
        epoch: 2,
        running: true,
        intent: Intent::Replica,
        upstream: Some(upstream("n1")),
        postgres: Some(pg(true, Some("n1"))),
        ..Facts::default()
    };
    let follow = |to: &str| Action::Follow {
        upstream: upstream(to),
        settings: ManagedSettings::default(),
        reclone: true,
    };
    let (steps, r) = run(
        Execution::new(command(2, follow("n3"))),
        &facts,
        |s| match s {
            Step::WaitStreaming(_) => Outcome::Yes,
            _ => Outcome::Ok,
        },
    );
    assert_eq!(r, Ok("re-pointed to n3".into()));
    assert!(!steps.contains(&Step::StopFast));
    // Not streaming from a reachable upstream: stopped and rejoined the
    // thorough way (its timeline may have diverged).
    let not_streaming = Facts {
        postgres: Some(pg(true, None)),
        data: valid(true, true),
        ..facts.clone()
    };
    let answer = |reachable: bool| {
        move |s: &Step| match s {
            Step::WaitStreaming(_) => Outcome::No,
            Step::IsReachable(_) if reachable => Outcome::Yes,
            Step::IsReachable(_) => Outcome::No,
            Step::Rewind(_) => Outcome::Rewound(RewindOutcome::NotNeeded),
            _ => Outcome::Ok,
        }
    };
    for to in ["n1", "n3"] {
        let (steps, r) = run(
            Execution::new(command(2, follow(to))),
            &not_streaming,
            answer(true),
        );
        assert_eq!(r, Ok(format!("following {to}")), "{steps:?}");
        let stop = position(&steps, |s| *s == Step::StopFast);
        let start = position(&steps, |s| *s == Step::Start);
        assert!(stop < start, "{steps:?}");
        // Its upstream down: left running (found by tests/recovery.rs: a
        // primary crashed while both replicas were told to follow it
        // again, they stopped, could not rewind, and the cluster stayed
        // without a candidate).
        let (steps, r) = run(
            Execution::new(command(2, follow(to))),
            &not_streaming,
            answer(false),
        );
        assert_eq!(
            r,
            Ok(format!(
                "left running as a replica of {to}, which is out of reach now"
            )),
            "{steps:?}"
        );
        assert!(!steps.contains(&Step::StopFast), "{steps:?}");
        if to == "n1" {
            // Its own upstream: not marked busy while that is found out,
            // so it stays a candidate meanwhile.
            assert!(
                !steps.contains(&Step::Phase(AgentPhase::Starting)),
                "{steps:?}"
            );
        }
    }
    // Already streaming from its upstream: nothing to do.
    let (_, r) = run(Execution::new(command(2, follow("n1"))), &facts, ok);
    assert_eq!(r, Ok("already streaming from n1".into()));
}

#[test]
fn reinit_refuses_a_primary_and_records_its_action() {
    let primary = Facts {
        epoch: 2,
        running: true,
        postgres: Some(pg(false, None)),
        ..Facts::default()
    };
    let reinit = Action::Reinit {
        upstream: upstream("n1"),
        action_id: 9,
    };
    let (_, r) = run(Execution::new(command(2, reinit.clone())), &primary, ok);
    assert!(r.unwrap_err().contains("running primary"));
    let replica = Facts {
        epoch: 2,
        data: DataDirState::Empty,
        ..Facts::default()
    };
    let (steps, r) = run(Execution::new(command(2, reinit)), &replica, ok);
    assert!(r.unwrap().starts_with("re-initialized"));
    assert_eq!(
        steps.last(),
        Some(&Step::Persist(Change::CompletedAction(9)))
    );
    assert!(steps.contains(&Step::Wipe));
}
