use super::*;

use super::super::record::{self, FinalRows, JsonLines, Outcome};

// ---------------------------------------------------------------------------
// Builders: each test below is a short story told with these.
// ---------------------------------------------------------------------------

/// The primary's lease in every story.
const TTL: u64 = 2_000;

fn setup(sync: bool) -> Setup {
    Setup {
        seed: 7,
        sync,
        nodes: vec!["n1".into(), "n2".into(), "n3".into()],
        managers: 3,
        namespaces: true,
        colocated: false,
        overlap: false,
        ttl_ms: TTL,
        command: "pgquorum drill --seed 7".into(),
    }
}

fn ev(at_ms: u64, event: Event) -> Stamped {
    Stamped { at_ms, event }
}

fn started(at_ms: u64, sync: bool) -> Stamped {
    ev(at_ms, Event::Started { setup: setup(sync) })
}

/// A decision in the managers' history; a bootstrap when there was no old
/// primary, a failover otherwise.
fn epoch(at_ms: u64, epoch: u64, primary: &str, old_primary: &str) -> Stamped {
    ev(
        at_ms,
        Event::Epoch {
            epoch,
            kind: if old_primary.is_empty() {
                "bootstrap".into()
            } else {
                "failover".into()
            },
            primary: primary.into(),
            old_primary: old_primary.into(),
            reason: String::new(),
        },
    )
}

/// Fault `id` of `kind` on `host`, while n1 is the primary; `target` is
/// "primary", "replica" or "" as the drill writes it.
fn fault(at_ms: u64, id: u32, kind: &str, host: &str, target: &str) -> Stamped {
    ev(
        at_ms,
        Event::Fault {
            id,
            kind: kind.into(),
            hosts: vec![host.into()],
            primary: "n1".into(),
            target: target.into(),
            detail: "detail".into(),
        },
    )
}

fn healed(at_ms: u64, id: u32) -> Stamped {
    ev(at_ms, Event::Healed { id })
}

fn converged(at_ms: u64, id: u32, took_ms: u64) -> Stamped {
    ev(at_ms, Event::Converged { id, took_ms })
}

fn not_converged(at_ms: u64, id: u32, state: &str) -> Stamped {
    ev(
        at_ms,
        Event::NotConverged {
            id,
            waited_ms: 30_000,
            state: state.into(),
        },
    )
}

/// A write sent at `start_ms`, acknowledged at `end_ms` by `server` on
/// `timeline`. Direct writers (client >= 1000) name their node.
fn ack(client: u32, seq: u64, server: &str, timeline: u32, start_ms: u64, end_ms: u64) -> Attempt {
    Attempt {
        client,
        seq,
        node: (client >= DIRECT_WRITER_BASE).then(|| server.to_string()),
        start_ms,
        end_ms,
        outcome: Outcome::Acked {
            server: server.into(),
            timeline,
        },
    }
}

fn failed(client: u32, seq: u64, start_ms: u64, end_ms: u64) -> Attempt {
    Attempt {
        client,
        seq,
        node: None,
        start_ms,
        end_ms,
        outcome: Outcome::Failed {
            error: "timed out".into(),
        },
    }
}

/// Client 1 writing to `server` on `timeline`, one write sent at each of
/// `starts` and acknowledged 10 ms later, numbered from `first_seq`.
fn writes(
    server: &str,
    timeline: u32,
    first_seq: u64,
    starts: impl IntoIterator<Item = u64>,
) -> Vec<Attempt> {
    starts
        .into_iter()
        .zip(first_seq..)
        .map(|(s, seq)| ack(1, seq, server, timeline, s, s + 10))
        .collect()
}

/// The rows of every acknowledged attempt.
fn acked_rows(attempts: &[Attempt]) -> Vec<(u32, u64)> {
    attempts
        .iter()
        .filter(|a| a.acked().is_some())
        .map(|a| (a.client, a.seq))
        .collect()
}

fn log(events: Vec<Stamped>, attempts: Vec<Attempt>, rows: Option<Vec<(u32, u64)>>) -> Log {
    Log {
        events,
        attempts,
        final_rows: rows.map(|rows| FinalRows {
            primary: "n2".into(),
            at_ms: 100_000,
            rows,
        }),
    }
}

/// A log whose final primary holds every acknowledged row.
fn complete(events: Vec<Stamped>, attempts: Vec<Attempt>) -> Log {
    let rows = acked_rows(&attempts);
    log(events, attempts, Some(rows))
}

/// A log whose final primary holds every acknowledged row but `missing`.
fn without(events: Vec<Stamped>, attempts: Vec<Attempt>, missing: &[(u32, u64)]) -> Log {
    let rows = acked_rows(&attempts)
        .into_iter()
        .filter(|r| !missing.contains(r))
        .collect();
    log(events, attempts, Some(rows))
}

fn named<'a>(v: &'a Verdict, name: &str) -> &'a CheckResult {
    v.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check named {name:?} in {:#?}", v.checks))
}

fn names(v: &Verdict) -> Vec<&str> {
    v.checks.iter().map(|c| c.name.as_str()).collect()
}

fn failing(v: &Verdict) -> Vec<&str> {
    v.checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect()
}

const LOST: &str = "lost writes";
const OVERLAP: &str = "overlapping acknowledgements";
const EPOCH: &str = "writes after a newer epoch";
const LIVENESS: &str = "liveness";
const COMPLETED: &str = "completed";

// ---------------------------------------------------------------------------
// 1. A clean run.
// ---------------------------------------------------------------------------

/// A primary isolation with a failover from n1 (timeline 1) to n2
/// (timeline 2), healed and converged, every acknowledged row kept.
fn clean_events() -> Vec<Stamped> {
    vec![
        started(1_000, true),
        epoch(1_000, 1, "n1", ""),
        fault(2_000, 1, "primary-isolate", "n1", "primary"),
        epoch(4_000, 2, "n2", "n1"),
        healed(5_000, 1),
        converged(6_500, 1, 1_500),
        converged(7_000, 0, 500),
    ]
}

fn clean_attempts() -> Vec<Attempt> {
    let mut a = writes("n1", 1, 1, [1_100, 1_200, 1_300, 1_900]);
    // Timed out across the failover: never counted, and does not split
    // the outage.
    a.push(failed(2, 1, 1_950, 3_950));
    // A direct writer still reaching the isolated old primary before the
    // new epoch: acknowledged, but not part of the client outage.
    a.push(ack(1001, 1, "n1", 1, 2_100, 2_105));
    a.extend(writes("n2", 2, 5, [4_100, 4_200, 5_000, 6_000, 6_600]));
    a.push(ack(1002, 1, "n2", 2, 6_700, 6_705));
    a
}

/// Everything passes, and every figure of the verdict is exact: the
/// outage is the longest gap between client acknowledgements around the
/// fault (1910 → 4110), ignoring direct writers and failed attempts.
#[test]
fn clean_run_passes_with_exact_figures() {
    let v = check(&complete(clean_events(), clean_attempts()));

    assert!(v.passed, "{:#?}", v.checks);
    assert_eq!(names(&v), [LOST, OVERLAP, EPOCH, LIVENESS]);
    assert!(failing(&v).is_empty());
    assert!(v.checks.iter().all(|c| c.examples.is_empty()));
    assert_eq!(v.setup, Some(setup(true)));
    assert_eq!(v.duration_ms, 6_000);
    assert_eq!(
        v.writes,
        WriteStats {
            attempts: 12,
            acked: 11,
            acked_direct: 2,
            lost: 0,
            final_rows: 11,
        }
    );
    assert_eq!(
        v.faults,
        [FaultSummary {
            id: 1,
            kind: "primary-isolate".into(),
            target: "primary".into(),
            hosts: vec!["n1".into()],
            primary: "n1".into(),
            at_ms: 1_000,
            held_ms: Some(3_000),
            outage_ms: 4_110 - 1_910,
            converged_ms: Some(6_500 - 5_000),
            lost: 0,
        }]
    );
    assert_eq!(
        v.kinds,
        [KindStats {
            kind: "primary-isolate/primary".into(),
            count: 1,
            outage_median_ms: 2_200,
            outage_max_ms: 2_200,
            converged_median_ms: 1_500,
            converged_max_ms: 1_500,
            lost: 0,
        }]
    );
    assert_eq!(
        named(&v, LOST).summary,
        "0 of 11 acknowledged writes missing from the final primary n2 (synchronous mode: must be 0)"
    );
    assert_eq!(
        named(&v, LIVENESS).summary,
        "whole again after 1 of 1 heals (median 1500 ms, max 1500 ms); at the end after 500 ms"
    );
    assert_eq!(
        named(&v, EPOCH).summary,
        "0 writes acknowledged by a node after an epoch naming another primary (2 epochs)"
    );
    assert_eq!(
        named(&v, OVERLAP).summary,
        "0 pairs of nodes acknowledging writes at the same time, over 2 terms (a node on a timeline)"
    );

    let times: Vec<u64> = v.timeline.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [0, 0, 1_000, 3_000, 4_000, 5_500, 6_000]);
    assert!(v.timeline[0]
        .1
        .starts_with("started: 3 nodes, 3 managers, sync mode, seed 7"));
    assert_eq!(v.timeline[1].1, "epoch 1: bootstrap, primary n1");
    assert_eq!(v.timeline[2].1, "fault 1: primary-isolate on n1 (detail)");
    assert_eq!(v.timeline[3].1, "epoch 2: failover n1 -> n2");
    assert_eq!(v.timeline[4].1, "fault 1 healed");
    assert_eq!(v.timeline[5].1, "fault 1: whole again after 1500 ms");
    assert_eq!(v.timeline[6].1, "whole again at the end after 500 ms");
}

/// With no acknowledgement after the fault at all, the outage runs to the
/// end of the drill.
#[test]
fn outage_runs_to_the_end_when_writes_never_resume() {
    let events = vec![
        started(1_000, true),
        epoch(1_000, 1, "n1", ""),
        fault(2_000, 1, "host-crash", "n1", "primary"),
        healed(3_000, 1),
        not_converged(9_000, 1, "no primary"),
    ];
    let v = check(&complete(events, writes("n1", 1, 1, [1_500])));
    assert_eq!(v.faults[0].outage_ms, 9_000 - 1_510);
    assert_eq!(v.faults[0].converged_ms, None);
}

// ---------------------------------------------------------------------------
// 2. Lost writes, synchronous mode.
// ---------------------------------------------------------------------------

/// In synchronous mode one missing acknowledged row fails the drill, and
/// the example names the write.
#[test]
fn sync_lost_write_fails() {
    let v = check(&without(clean_events(), clean_attempts(), &[(1, 6)]));

    assert!(!v.passed);
    assert_eq!(failing(&v), [LOST]);
    let lost = named(&v, LOST);
    assert_eq!(
        lost.summary,
        "1 of 11 acknowledged writes missing from the final primary n2 (synchronous mode: must be 0)"
    );
    assert_eq!(
        lost.examples,
        ["client 1 seq 6 acknowledged by n2 (timeline 2) at +3210 ms"]
    );
    assert_eq!(v.writes.lost, 1);
    assert_eq!(v.writes.final_rows, 10);
    assert_eq!(v.faults[0].lost, 0);
}

/// Synchronous mode excuses nothing, not even a write the old primary
/// acknowledged just before it was isolated; the example says which fault
/// it was near.
#[test]
fn sync_mode_does_not_excuse_writes_near_a_fault() {
    let v = check(&without(clean_events(), clean_attempts(), &[(1, 4)]));

    assert_eq!(failing(&v), [LOST]);
    assert_eq!(
        named(&v, LOST).examples,
        ["client 1 seq 4 acknowledged by n1 (timeline 1) at +910 ms, during fault 1 (primary-isolate)"]
    );
    assert_eq!(v.faults[0].lost, 0);
    assert_eq!(v.kinds[0].lost, 0);
    assert_eq!(v.writes.lost, 1);
}

/// At most ten examples, but every missing row counted.
#[test]
fn lost_examples_are_capped_at_ten() {
    let attempts = writes("n1", 1, 1, (0..15).map(|i| 1_100 + i * 100));
    let events = vec![
        started(1_000, true),
        epoch(1_000, 1, "n1", ""),
        converged(3_000, 0, 10),
    ];
    let v = check(&log(events, attempts, Some(Vec::new())));
    let lost = named(&v, LOST);
    assert!(!lost.passed);
    assert_eq!(lost.examples.len(), 10);
    assert_eq!(v.writes.lost, 15);
    assert!(
        lost.summary
            .starts_with("15 of 15 acknowledged writes missing"),
        "{}",
        lost.summary
    );
}

// ---------------------------------------------------------------------------
// 3. Lost writes, asynchronous mode.
// ---------------------------------------------------------------------------

/// An asynchronous drill with one fault of `kind` on `host` at 10 000 ms
/// (lease 2000 ms), steady writes by n1 that all survive, and `missing`
/// acknowledged but absent from the final primary.
fn async_with_missing(kind: &str, host: &str, missing: Attempt) -> Verdict {
    let events = vec![
        started(1_000, false),
        epoch(1_000, 1, "n1", ""),
        fault(
            10_000,
            1,
            kind,
            host,
            if host == "n1" { "primary" } else { "replica" },
        ),
        healed(12_000, 1),
        converged(13_000, 1, 1_000),
        converged(14_000, 0, 100),
    ];
    let mut attempts = writes("n1", 1, 1, (1..=13).map(|i| i * 1_000 + 500));
    let gone = (missing.client, missing.seq);
    attempts.push(missing);
    check(&without(events, attempts, &[gone]))
}

/// A write the faulted node acknowledged within one lease after the fault
/// may be lost in asynchronous mode: passes, and is charged to the fault.
#[test]
fn async_loss_within_a_lease_after_a_fault_on_that_node_is_excused() {
    let v = async_with_missing("primary-isolate", "n1", ack(2, 1, "n1", 1, 11_000, 11_010));

    assert!(v.passed, "{:#?}", v.checks);
    assert_eq!(v.faults[0].lost, 1);
    assert_eq!(v.kinds[0].lost, 1);
    assert_eq!(v.writes.lost, 1);
    let lost = named(&v, LOST);
    assert!(lost.examples.is_empty());
    assert_eq!(
        lost.summary,
        "1 of 14 acknowledged writes missing from the final primary n2; 1 of them acknowledged within one lease of a fault on the node that took them (asynchronous mode allows that), 0 not"
    );
}

/// The window is one lease either side of the fault, bounds included:
/// acknowledged no earlier than ttl before it, sent no later than ttl after.
#[test]
fn async_excuse_window_bounds() {
    // (sent, acknowledged, excused?)
    let cases = [
        (8_500, 8_510, true),    // just before the fault
        (7_990, 8_000, true),    // acknowledged exactly one lease before
        (7_989, 7_999, false),   // 1 ms earlier
        (12_000, 12_010, true),  // sent exactly one lease after
        (12_001, 12_011, false), // 1 ms later
        (5_000, 5_010, false),   // far before
        (20_000, 20_010, false), // far after
    ];
    for (start, end, excused) in cases {
        let v = async_with_missing("primary-isolate", "n1", ack(2, 1, "n1", 1, start, end));
        assert_eq!(
            named(&v, LOST).passed,
            excused,
            "sent {start} acknowledged {end}"
        );
        assert_eq!(v.passed, excused, "sent {start} acknowledged {end}");
        assert_eq!(
            v.faults[0].lost,
            u64::from(excused),
            "sent {start} acknowledged {end}"
        );
        assert_eq!(v.writes.lost, 1);
        if !excused {
            assert_eq!(named(&v, LOST).examples.len(), 1);
            assert!(named(&v, LOST).examples[0].starts_with("client 2 seq 1 acknowledged by n1"));
        }
    }
}

/// Only a fault on the node that acknowledged the write excuses it.
#[test]
fn async_loss_on_a_node_the_fault_missed_fails() {
    let v = async_with_missing("replica-isolate", "n3", ack(2, 1, "n1", 1, 11_000, 11_010));

    assert!(!v.passed);
    assert_eq!(failing(&v), [LOST]);
    assert_eq!(v.faults[0].lost, 0);
    assert_eq!(
        named(&v, LOST).examples,
        ["client 2 seq 1 acknowledged by n1 (timeline 1) at +10010 ms"]
    );
}

/// A clean demotion (switchover) or a manager-side fault loses nothing:
/// no excuse, even on the right node at the right time.
#[test]
fn async_loss_near_a_clean_fault_fails() {
    for kind in ["switchover", "manager-kill", "managers-restart"] {
        let v = async_with_missing(kind, "n1", ack(2, 1, "n1", 1, 11_000, 11_010));
        assert!(!v.passed, "{kind}");
        assert_eq!(failing(&v), [LOST], "{kind}");
        assert_eq!(v.faults[0].lost, 0, "{kind}");
        assert_eq!(
            named(&v, LOST).examples,
            ["client 2 seq 1 acknowledged by n1 (timeline 1) at +10010 ms"],
            "{kind}"
        );
    }
}

/// Every fault that can take a primary away uncleanly excuses a loss.
#[test]
fn async_loss_near_an_unclean_fault_is_excused() {
    for kind in [
        "host-crash",
        "agent-kill",
        "agent-freeze",
        "host-freeze",
        "postgres-freeze",
        "primary-isolate",
        "primary-deaf",
        "primary-mute",
        "failover-to",
    ] {
        let v = async_with_missing(kind, "n1", ack(2, 1, "n1", 1, 11_000, 11_010));
        assert!(v.passed, "{kind}: {:#?}", v.checks);
        assert_eq!(v.faults[0].lost, 1, "{kind}");
    }
}

// ---------------------------------------------------------------------------
// 4. Overlapping acknowledgements.
// ---------------------------------------------------------------------------

fn overlap_verdict(attempts: Vec<Attempt>) -> Verdict {
    let events = vec![started(1_000, true), converged(10_000, 0, 10)];
    check(&complete(events, attempts))
}

/// A write on timeline 1 sent after a timeline-2 write was acknowledged
/// proves two primaries at once.
#[test]
fn old_timeline_write_sent_after_newer_ack_fails() {
    let v = overlap_verdict(vec![
        ack(1, 1, "n1", 1, 2_000, 2_010),
        ack(1, 2, "n2", 2, 4_000, 4_010),
        ack(2, 1, "n1", 1, 4_500, 4_510),
    ]);

    assert!(!v.passed);
    assert_eq!(failing(&v), [OVERLAP]);
    let c = named(&v, OVERLAP);
    assert_eq!(
        c.examples,
        ["n1 (timeline 1) took client 2 seq 1 sent at 4500 ms, after n2 (timeline 2) had acknowledged client 1 seq 2 at 4010 ms; and n2 took client 1 seq 2 sent at 4000 ms, after n1 had acknowledged client 1 seq 1 at 2010 ms"]
    );
    assert_eq!(
        c.summary,
        "1 pairs of nodes acknowledging writes at the same time, over 2 terms (a node on a timeline)"
    );
}

/// Timeline 1 entirely before timeline 2 passes; so do a write sent
/// exactly when the first newer one was acknowledged and one still in
/// flight when it was (sent before, acknowledged after).
#[test]
fn sequential_and_touching_timelines_pass() {
    let before = vec![
        ack(1, 1, "n1", 1, 1_000, 1_010),
        ack(1, 2, "n1", 1, 2_000, 2_010),
        ack(1, 3, "n2", 2, 3_000, 3_010),
        ack(1, 4, "n2", 2, 3_100, 3_110),
    ];
    let v = overlap_verdict(before.clone());
    assert!(v.passed, "{:#?}", v.checks);

    // old.start_ms == new.end_ms
    let mut touching = before.clone();
    touching.push(ack(2, 1, "n1", 1, 3_010, 3_020));
    let v = overlap_verdict(touching);
    assert!(named(&v, OVERLAP).passed, "{:#?}", v.checks);

    // old.start_ms < new.end_ms < old.end_ms
    let mut in_flight = before.clone();
    in_flight.push(ack(2, 1, "n1", 1, 2_990, 3_500));
    let v = overlap_verdict(in_flight);
    assert!(named(&v, OVERLAP).passed, "{:#?}", v.checks);

    // ... and one millisecond later it is proof.
    let mut late = before;
    late.push(ack(2, 1, "n1", 1, 3_011, 3_020));
    let v = overlap_verdict(late);
    assert!(!named(&v, OVERLAP).passed);
}

/// Two nodes may write on the same timeline number in turn: a replica
/// that never saw timeline 2 picks 2 again when it is promoted after the
/// first timeline-2 primary died. Only interleaving is proof.
#[test]
fn two_servers_on_one_timeline_in_turn_pass_interleaved_fail() {
    let v = overlap_verdict(vec![
        ack(1, 1, "n1", 2, 1_000, 1_010),
        ack(1, 2, "n2", 2, 2_000, 2_010),
    ]);
    assert!(named(&v, OVERLAP).passed, "{:#?}", v.checks);
    assert_eq!(
        named(&v, OVERLAP).summary,
        "0 pairs of nodes acknowledging writes at the same time, over 2 terms (a node on a timeline)"
    );

    let v = overlap_verdict(vec![
        ack(1, 1, "n1", 2, 1_000, 1_010),
        ack(1, 2, "n2", 2, 2_000, 2_010),
        ack(1, 3, "n1", 2, 3_000, 3_010),
    ]);
    assert_eq!(failing(&v), [OVERLAP]);
    assert!(
        named(&v, OVERLAP).examples[0].starts_with("n1 (timeline 2) took client 1 seq 3"),
        "{:#?}",
        named(&v, OVERLAP).examples
    );
}

/// The check compares every pair of timelines, not only neighbours.
#[test]
fn old_timeline_write_after_a_much_newer_ack_fails() {
    let v = overlap_verdict(vec![
        ack(1, 1, "n1", 1, 1_000, 1_010),
        ack(1, 2, "n2", 2, 2_000, 2_010),
        ack(1, 3, "n3", 3, 3_000, 3_010),
        ack(2, 1, "n1", 1, 3_500, 3_510),
    ]);
    let c = named(&v, OVERLAP);
    assert!(!c.passed);
    assert_eq!(c.examples.len(), 2, "{:#?}", c.examples);
    assert!(
        c.examples[0].contains("after n2 (timeline 2) had acknowledged"),
        "{}",
        c.examples[0]
    );
    assert!(
        c.examples[1].contains("after n3 (timeline 3) had acknowledged"),
        "{}",
        c.examples[1]
    );
}

// ---------------------------------------------------------------------------
// 5. Writes after a newer epoch.
// ---------------------------------------------------------------------------

/// n1 bootstraps at 1000, n2 takes over at 4000, n1 again at 8000.
fn epoch_verdict(attempts: Vec<Attempt>) -> Verdict {
    let events = vec![
        started(1_000, true),
        epoch(1_000, 1, "n1", ""),
        epoch(4_000, 2, "n2", "n1"),
        epoch(8_000, 3, "n1", "n2"),
        converged(12_000, 0, 10),
    ];
    check(&complete(events, attempts))
}

/// The old primary acknowledging a write sent after the new epoch was
/// decided is a lease that did not hold.
#[test]
fn ack_by_old_primary_sent_after_new_epoch_fails() {
    let v = epoch_verdict(vec![ack(1, 1, "n1", 1, 4_001, 4_010)]);

    assert!(!v.passed);
    assert_eq!(failing(&v), [EPOCH]);
    let c = named(&v, EPOCH);
    assert_eq!(
        c.examples,
        ["client 1 seq 1 sent at 4001 ms was acknowledged by n1, but epoch 2 made n2 the primary at 4000 ms"]
    );
    assert_eq!(
        c.summary,
        "1 writes acknowledged by a node after an epoch naming another primary (3 epochs)"
    );
}

/// A write sent before (or exactly at) the decision may still be
/// acknowledged by the old primary after it.
#[test]
fn ack_by_old_primary_sent_before_new_epoch_passes() {
    let v = epoch_verdict(vec![
        ack(1, 1, "n1", 1, 3_999, 4_500),
        ack(1, 2, "n1", 1, 4_000, 4_600),
    ]);
    assert!(v.passed, "{:#?}", v.checks);
}

/// A later epoch naming n1 again makes its acknowledgements legitimate, and
/// n2's no longer.
#[test]
fn later_epoch_naming_the_old_primary_again() {
    let v = epoch_verdict(vec![ack(1, 1, "n1", 3, 9_000, 9_010)]);
    assert!(named(&v, EPOCH).passed, "{:#?}", v.checks);

    let v = epoch_verdict(vec![ack(1, 1, "n2", 2, 9_000, 9_010)]);
    assert!(!named(&v, EPOCH).passed);
    assert_eq!(
        named(&v, EPOCH).examples,
        ["client 1 seq 1 sent at 9000 ms was acknowledged by n2, but epoch 3 made n1 the primary at 8000 ms"]
    );
}

/// Writes sent before any known epoch are not judged, and an epoch without
/// a primary is not one.
#[test]
fn writes_before_any_epoch_and_primaryless_epochs_are_ignored() {
    let events = vec![
        started(1_000, true),
        epoch(2_000, 1, "n1", ""),
        epoch(3_000, 2, "", "n1"),
        converged(5_000, 0, 10),
    ];
    let v = check(&complete(
        events,
        vec![
            ack(1, 1, "n3", 1, 1_500, 1_510),
            ack(1, 2, "n1", 2, 3_500, 3_510),
        ],
    ));
    let c = named(&v, EPOCH);
    assert!(c.passed, "{c:#?}");
    assert!(c.summary.ends_with("(1 epochs)"), "{}", c.summary);
}

// ---------------------------------------------------------------------------
// 6. Liveness.
// ---------------------------------------------------------------------------

/// A fault after which the cluster did not become whole fails liveness,
/// even if it was whole at the very end.
#[test]
fn not_converged_fails_liveness() {
    let events = vec![
        started(1_000, true),
        epoch(1_000, 1, "n1", ""),
        fault(2_000, 1, "host-crash", "n3", "replica"),
        healed(3_000, 1),
        not_converged(33_000, 1, "n3 not streaming"),
        converged(34_000, 0, 1_000),
    ];
    let v = check(&complete(events, writes("n1", 1, 1, [1_500, 2_500, 3_500])));

    assert!(!v.passed);
    assert_eq!(failing(&v), [LIVENESS]);
    assert_eq!(
        named(&v, LIVENESS).examples,
        ["after fault 1, the cluster was not whole 30 s after it was healed: n3 not streaming"]
    );
    assert_eq!(v.faults[0].converged_ms, None);
}

/// No final `Converged { id: 0 }`: liveness fails.
#[test]
fn missing_final_convergence_fails_liveness() {
    let mut events = clean_events();
    events.retain(|e| !matches!(e.event, Event::Converged { id: 0, .. }));
    let v = check(&complete(events, clean_attempts()));

    assert!(!v.passed);
    assert_eq!(failing(&v), [LIVENESS]);
    assert_eq!(
        named(&v, LIVENESS).examples,
        ["the cluster was never seen whole after the final heal"]
    );
}

/// Not whole at the end: one example, not two.
#[test]
fn final_not_converged_is_reported_once() {
    let mut events = clean_events();
    events.retain(|e| !matches!(e.event, Event::Converged { id: 0, .. }));
    events.push(not_converged(40_000, 0, "no primary"));
    let v = check(&complete(events, clean_attempts()));

    assert_eq!(failing(&v), [LIVENESS]);
    assert_eq!(
        named(&v, LIVENESS).examples,
        ["at the end, the cluster was not whole 30 s after the final heal: no primary"]
    );
}

/// A fault that overlapped the next (no convergence of its own) is not a
/// failure, only noted in the summary.
#[test]
fn overlapped_fault_is_noted_not_failed() {
    let events = vec![
        started(1_000, true),
        epoch(1_000, 1, "n1", ""),
        fault(2_000, 1, "host-freeze", "n3", "replica"),
        fault(2_500, 2, "agent-kill", "n2", "replica"),
        healed(3_000, 1),
        healed(3_500, 2),
        converged(4_000, 2, 500),
        converged(5_000, 0, 100),
    ];
    let v = check(&complete(
        events,
        writes("n1", 1, 1, (1..=5).map(|i| i * 1_000)),
    ));

    assert!(v.passed, "{:#?}", v.checks);
    assert!(
        named(&v, LIVENESS)
            .summary
            .ends_with("; 1 faults overlapped the next and were judged with it"),
        "{}",
        named(&v, LIVENESS).summary
    );
    assert_eq!(v.faults[0].converged_ms, None);
    assert_eq!(v.faults[1].converged_ms, Some(500));
}

// ---------------------------------------------------------------------------
// 7, 8. Missing final rows, interrupted drills.
// ---------------------------------------------------------------------------

/// Without the final primary's rows, nothing can be said: "lost writes"
/// fails (it does not silently pass).
#[test]
fn missing_final_rows_fail_lost_writes() {
    let v = check(&log(clean_events(), clean_attempts(), None));

    assert!(!v.passed);
    assert_eq!(failing(&v), [LOST]);
    let c = named(&v, LOST);
    assert!(
        c.summary.contains("the final primary was never read"),
        "{}",
        c.summary
    );
    assert!(c.examples.is_empty());
    assert_eq!(v.writes.lost, 0);
    assert_eq!(v.writes.final_rows, 0);
    assert_eq!(v.writes.acked, 11);
}

/// An interrupted drill gets a failing "completed" check, after the others.
#[test]
fn interrupted_drill_fails_completed() {
    let mut events = clean_events();
    events.push(ev(
        8_000,
        Event::Interrupted {
            why: "Ctrl-C".into(),
        },
    ));
    let v = check(&complete(events, clean_attempts()));

    assert!(!v.passed);
    assert_eq!(names(&v), [LOST, OVERLAP, EPOCH, LIVENESS, COMPLETED]);
    assert_eq!(failing(&v), [COMPLETED]);
    assert_eq!(
        named(&v, COMPLETED).summary,
        "the drill did not run to its end: Ctrl-C"
    );
    assert_eq!(
        v.timeline.last(),
        Some(&(7_000, "interrupted: Ctrl-C".to_string()))
    );
}

// ---------------------------------------------------------------------------
// 9. Failed attempts.
// ---------------------------------------------------------------------------

/// A failed attempt is neither acknowledged nor lost, present in the final
/// rows or not, and is never evidence of two primaries or a stale lease.
#[test]
fn failed_attempts_are_never_counted() {
    let events = vec![
        started(1_000, true),
        epoch(1_000, 1, "n1", ""),
        epoch(4_000, 2, "n2", "n1"),
        converged(9_000, 0, 10),
    ];
    let mut attempts = writes("n1", 1, 1, [1_100, 1_200]);
    attempts.extend(writes("n2", 2, 3, [5_000, 5_100]));
    attempts.push(failed(2, 1, 3_000, 4_500)); // absent from the final rows
    attempts.push(failed(2, 2, 6_000, 6_500)); // committed after all
    attempts.push(failed(1001, 1, 7_000, 7_100)); // old primary, after the epoch
    let mut rows = acked_rows(&attempts);
    rows.push((2, 2));
    let v = check(&log(events, attempts, Some(rows)));

    assert!(v.passed, "{:#?}", v.checks);
    assert_eq!(
        v.writes,
        WriteStats {
            attempts: 7,
            acked: 4,
            acked_direct: 0,
            lost: 0,
            final_rows: 5,
        }
    );
    assert!(named(&v, LOST)
        .summary
        .starts_with("0 of 4 acknowledged writes missing"));
}

// ---------------------------------------------------------------------------
// 10. Per-kind figures.
// ---------------------------------------------------------------------------

/// Two postgres freezes of the primary make one `KindStats` (count 2, the
/// larger outage as max); the same fault on a replica is its own line.
/// (The median of two values is their mean.)
#[test]
fn kind_stats_group_faults_by_kind_and_target() {
    let events = vec![
        started(1_000, true),
        epoch(1_000, 1, "n1", ""),
        fault(2_000, 1, "postgres-freeze", "n1", "primary"),
        healed(3_000, 1),
        converged(3_500, 1, 500),
        fault(6_000, 2, "postgres-freeze", "n1", "primary"),
        healed(8_000, 2),
        converged(9_000, 2, 1_000),
        fault(11_000, 3, "postgres-freeze", "n2", "replica"),
        healed(12_000, 3),
        converged(12_100, 3, 100),
        converged(14_000, 0, 100),
    ];
    // A write acknowledged every 100 ms, except while the primary is frozen:
    // last before fault 1 at 1900, next at 3300; last before fault 2 at
    // 5900, next at 8500.
    let acked_at = (11..=139)
        .map(|i| i * 100)
        .filter(|&t| !(2_000..3_300).contains(&t) && !(6_000..8_500).contains(&t));
    let v = check(&complete(
        events,
        writes("n1", 1, 1, acked_at.map(|t| t - 10)),
    ));

    assert!(v.passed, "{:#?}", v.checks);
    let outages: Vec<u64> = v.faults.iter().map(|f| f.outage_ms).collect();
    assert_eq!(outages, [1_400, 2_600, 100]);
    assert_eq!(
        v.kinds,
        [
            KindStats {
                kind: "postgres-freeze/primary".into(),
                count: 2,
                outage_median_ms: 2_000,
                outage_max_ms: 2_600,
                converged_median_ms: 750,
                converged_max_ms: 1_000,
                lost: 0,
            },
            KindStats {
                kind: "postgres-freeze/replica".into(),
                count: 1,
                outage_median_ms: 100,
                outage_max_ms: 100,
                converged_median_ms: 100,
                converged_max_ms: 100,
                lost: 0,
            },
        ]
    );
}

/// Faults without a target (network, managers) are grouped by kind alone,
/// and their losses add up.
#[test]
fn kind_stats_without_target_sum_losses() {
    let events = vec![
        started(1_000, false),
        epoch(1_000, 1, "n1", ""),
        fault(2_000, 1, "primary-isolate", "n1", ""),
        healed(3_000, 1),
        converged(4_000, 1, 1_000),
        fault(6_000, 2, "primary-isolate", "n1", ""),
        healed(7_000, 2),
        converged(8_000, 2, 1_000),
        converged(9_000, 0, 100),
    ];
    let attempts = writes("n1", 1, 1, [1_500, 2_500, 5_500, 6_500, 8_500]);
    let v = check(&without(events, attempts, &[(1, 2), (1, 3), (1, 4)]));

    assert!(v.passed, "{:#?}", v.checks);
    let lost: Vec<u64> = v.faults.iter().map(|f| f.lost).collect();
    // (1, 2) follows fault 1 within a lease; (1, 3) and (1, 4) surround
    // fault 2.
    assert_eq!(lost, [1, 2]);
    assert_eq!(v.kinds.len(), 1);
    assert_eq!(v.kinds[0].kind, "primary-isolate");
    assert_eq!(v.kinds[0].count, 2);
    assert_eq!(v.kinds[0].lost, 3);
    assert_eq!(v.writes.lost, 3);
}

// ---------------------------------------------------------------------------
// 11. Events recorded out of order.
// ---------------------------------------------------------------------------

/// Epochs are recorded with their decision time, which can be earlier than
/// the line before: the verdict is the same as for the sorted log, and the
/// timeline is in time order, starting at the earliest event.
#[test]
fn events_recorded_out_of_order_are_judged_in_time_order() {
    let sorted = vec![
        epoch(900, 1, "n1", ""),
        started(1_000, true),
        fault(2_000, 1, "primary-isolate", "n1", "primary"),
        epoch(4_000, 2, "n2", "n1"),
        healed(5_000, 1),
        converged(6_500, 1, 1_500),
        converged(7_000, 0, 500),
    ];
    // As the drill writes them: the history watcher learns of each epoch
    // after the fact.
    let recorded = vec![
        sorted[1].clone(),
        sorted[0].clone(),
        sorted[2].clone(),
        sorted[4].clone(),
        sorted[3].clone(),
        sorted[5].clone(),
        sorted[6].clone(),
    ];
    let v = check(&complete(recorded, clean_attempts()));

    assert_eq!(v, check(&complete(sorted, clean_attempts())));
    let times: Vec<u64> = v.timeline.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, [0, 100, 1_100, 3_100, 4_100, 5_600, 6_100]);
    assert_eq!(v.timeline[0].1, "epoch 1: bootstrap, primary n1");
    assert_eq!(v.timeline[3].1, "epoch 2: failover n1 -> n2");
    assert_eq!(v.faults[0].at_ms, 1_100);
    assert_eq!(v.duration_ms, 6_100);
    assert!(v.passed, "{:#?}", v.checks);
}

// ---------------------------------------------------------------------------
// Reading a drill's files.
// ---------------------------------------------------------------------------

fn write_drill(dir: &std::path::Path, l: &Log) {
    let mut events = JsonLines::create(&dir.join(record::EVENTS)).unwrap();
    for e in &l.events {
        events.append(e).unwrap();
    }
    events.flush().unwrap();
    let mut attempts = JsonLines::create(&dir.join(record::WRITES)).unwrap();
    for a in &l.attempts {
        attempts.append(a).unwrap();
    }
    attempts.flush().unwrap();
    if let Some(f) = &l.final_rows {
        std::fs::write(
            dir.join(record::FINAL),
            serde_json::to_vec_pretty(f).unwrap(),
        )
        .unwrap();
    }
}

/// What a drill writes down reads back the same, and is judged the same.
#[test]
fn log_read_round_trips() {
    let mut events = clean_events();
    events.push(ev(
        8_000,
        Event::Operation {
            id: 1,
            command: "switchover".into(),
            accepted: true,
            answer: "ok".into(),
        },
    ));
    let original = without(events, clean_attempts(), &[(1, 6)]);
    let dir = tempfile::tempdir().unwrap();
    write_drill(dir.path(), &original);

    let read = Log::read(dir.path()).unwrap();
    assert_eq!(read.events, original.events);
    assert_eq!(read.attempts, original.attempts);
    assert_eq!(read.final_rows, original.final_rows);
    let v = check(&read);
    assert_eq!(v, check(&original));
    assert_eq!(failing(&v), [LOST]);
}

/// A drill that never read its final primary reads back without final
/// rows (not an error), and is judged so.
#[test]
fn log_read_without_final_rows() {
    let original = log(clean_events(), clean_attempts(), None);
    let dir = tempfile::tempdir().unwrap();
    write_drill(dir.path(), &original);

    let read = Log::read(dir.path()).unwrap();
    assert_eq!(read.final_rows, None);
    assert_eq!(check(&read), check(&original));
}

/// Reading a directory that holds no drill names the missing file.
#[test]
fn log_read_of_an_empty_directory_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Log::read(dir.path()).unwrap_err().to_string();
    let missing = dir.path().join(record::EVENTS).display().to_string();
    assert!(err.contains(&missing), "{err}");
    assert!(err.contains("is this the directory of a drill"), "{err}");
}

/// A corrupt line is reported with its file and line number.
#[test]
fn log_read_reports_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    write_drill(dir.path(), &complete(clean_events(), clean_attempts()));
    let path = dir.path().join(record::WRITES);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{not json\n");
    std::fs::write(&path, text).unwrap();

    let err = Log::read(dir.path()).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{} line 13:", path.display())),
        "{err}"
    );
}
