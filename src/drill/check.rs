//! The drill's judge: a pure function of what was written down
//! ([`super::record::Log`]) to a verdict. Every check is sound — it flags
//! only what certainly happened — because a drill that cries wolf is
//! ignored:
//!
//! * **lost writes**: an acknowledged write missing from the final primary.
//!   None may be lost in synchronous mode. In asynchronous mode a write may
//!   be lost only when the node that acknowledged it was hit by a fault
//!   (isolated, frozen, crashed, its agent gone) within one lease of the
//!   acknowledgement: its last WAL may not have reached the replicas.
//! * **overlapping acknowledgements**: every row records the node and the
//!   timeline it was written on; a node writable on a timeline is a term (a
//!   promotion always starts a new timeline). When a term sent a write
//!   after another term's write was acknowledged, *and* the other way
//!   round, both were writable at the same time. (Which term came first
//!   is the epoch check's business: timelines alone cannot order nodes
//!   whose histories diverged.)
//! * **writes after a newer epoch**: once the managers committed a new
//!   epoch naming another primary (the history's decision time, which comes
//!   after the old primary's lease ran out), a write sent later and
//!   acknowledged by the old primary is a lease that did not hold.
//! * **liveness**: after every heal the cluster was whole again — a healthy
//!   primary, every node streaming, writes flowing — within the bound.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::record::{Attempt, Event, Log, Setup, Stamped};

/// Writers below this id go through the multi-host connection string;
/// their gaps are the outage an application sees.
pub const DIRECT_WRITER_BASE: u32 = 1000;

/// At most this many examples per failed check.
const EXAMPLES: usize = 10;

/// One check and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub summary: String,
    /// The first offending writes or events, when it failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
}

/// One fault, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSummary {
    pub id: u32,
    pub kind: String,
    /// "primary" or "replica" for a fault that hit one node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    pub hosts: Vec<String>,
    pub primary: String,
    /// Milliseconds after the drill started.
    pub at_ms: u64,
    pub held_ms: Option<u64>,
    /// The longest time no client write was acknowledged, from the fault
    /// until the cluster was whole again.
    pub outage_ms: u64,
    pub converged_ms: Option<u64>,
    /// Acknowledged writes lost because of this fault (asynchronous mode).
    pub lost: u64,
}

/// Figures per fault kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindStats {
    pub kind: String,
    pub count: u64,
    pub outage_median_ms: u64,
    pub outage_max_ms: u64,
    pub converged_median_ms: u64,
    pub converged_max_ms: u64,
    pub lost: u64,
}

/// Totals of the workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStats {
    pub attempts: u64,
    pub acked: u64,
    pub acked_direct: u64,
    pub lost: u64,
    pub final_rows: u64,
}

/// The verdict on one drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub passed: bool,
    pub setup: Option<Setup>,
    pub duration_ms: u64,
    pub checks: Vec<CheckResult>,
    pub writes: WriteStats,
    pub kinds: Vec<KindStats>,
    pub faults: Vec<FaultSummary>,
    /// Faults, heals, operations and epochs in order: (ms after the start,
    /// what).
    pub timeline: Vec<(u64, String)>,
}

/// A fault with what followed it.
struct FaultSpan<'a> {
    id: u32,
    kind: &'a str,
    target: &'a str,
    hosts: &'a [String],
    primary: &'a str,
    at: u64,
    healed: Option<u64>,
    /// When it was whole again, and how long that took after the heal.
    converged: Option<(u64, u64)>,
    not_converged: bool,
}

fn spans(events: &[Stamped]) -> Vec<FaultSpan<'_>> {
    let mut out: Vec<FaultSpan> = Vec::new();
    for e in events {
        match &e.event {
            Event::Fault {
                id,
                kind,
                hosts,
                primary,
                target,
                ..
            } => out.push(FaultSpan {
                id: *id,
                kind,
                target,
                hosts,
                primary,
                at: e.at_ms,
                healed: None,
                converged: None,
                not_converged: false,
            }),
            Event::Healed { id } => {
                if let Some(f) = out.iter_mut().find(|f| f.id == *id) {
                    f.healed = Some(e.at_ms);
                }
            }
            Event::Converged { id, took_ms } => {
                if let Some(f) = out.iter_mut().find(|f| f.id == *id) {
                    f.converged = Some((e.at_ms, *took_ms));
                }
            }
            Event::NotConverged { id, .. } => {
                if let Some(f) = out.iter_mut().find(|f| f.id == *id) {
                    f.not_converged = true;
                }
            }
            _ => {}
        }
    }
    out
}

/// Judge a drill.
pub fn check(log: &Log) -> Verdict {
    // Epochs are written down with their decision time, which can come
    // before events recorded earlier: judge in time order.
    let mut events = log.events.clone();
    events.sort_by_key(|e| e.at_ms);
    let setup = log.setup().cloned();
    let ttl = setup.as_ref().map_or(2000, |s| s.ttl_ms);
    let sync = setup.as_ref().is_some_and(|s| s.sync);
    let start = events
        .first()
        .map(|e| e.at_ms)
        .or_else(|| log.attempts.iter().map(|a| a.start_ms).min())
        .unwrap_or(0);
    let end = log
        .attempts
        .iter()
        .map(|a| a.end_ms)
        .chain(events.iter().map(|e| e.at_ms))
        .max()
        .unwrap_or(start);
    let faults = spans(&events);

    let acked: Vec<&Attempt> = log
        .attempts
        .iter()
        .filter(|a| a.acked().is_some())
        .collect();
    let mut checks = Vec::new();

    // Lost writes.
    let (lost_check, lost_by_fault, lost_total) =
        lost_writes(log, start, &acked, &faults, sync, ttl);
    checks.push(lost_check);
    checks.push(overlapping_acks(&acked));
    checks.push(acks_after_newer_epoch(&events, &acked));
    checks.push(liveness(&events, &faults));
    if let Some(why) = events.iter().find_map(|e| match &e.event {
        Event::Interrupted { why } => Some(why.clone()),
        _ => None,
    }) {
        checks.push(CheckResult {
            name: "completed".into(),
            passed: false,
            summary: format!("the drill did not run to its end: {why}"),
            examples: Vec::new(),
        });
    }

    // Client acknowledgements in time order, for outages.
    let mut client_acks: Vec<u64> = acked
        .iter()
        .filter(|a| a.client < DIRECT_WRITER_BASE)
        .map(|a| a.end_ms)
        .collect();
    client_acks.sort_unstable();

    let summaries: Vec<FaultSummary> = faults
        .iter()
        .map(|f| {
            let until = f
                .converged
                .map(|(at, _)| at)
                .or(f.healed)
                .unwrap_or(end)
                .max(f.at);
            FaultSummary {
                id: f.id,
                kind: f.kind.to_string(),
                target: f.target.to_string(),
                hosts: f.hosts.to_vec(),
                primary: f.primary.to_string(),
                at_ms: f.at.saturating_sub(start),
                held_ms: f.healed.map(|h| h.saturating_sub(f.at)),
                outage_ms: longest_gap(&client_acks, f.at, until, end),
                converged_ms: f.converged.map(|(_, took)| took),
                lost: lost_by_fault.get(&f.id).copied().unwrap_or(0),
            }
        })
        .collect();

    // A fault on the primary and the same fault on a replica are different
    // stories: figures per kind and target.
    let mut by_kind: BTreeMap<String, Vec<&FaultSummary>> = BTreeMap::new();
    for f in &summaries {
        let label = if f.target.is_empty() {
            f.kind.clone()
        } else {
            format!("{}/{}", f.kind, f.target)
        };
        by_kind.entry(label).or_default().push(f);
    }
    let kinds = by_kind
        .into_iter()
        .map(|(kind, list)| {
            let outages: Vec<u64> = list.iter().map(|f| f.outage_ms).collect();
            let converged: Vec<u64> = list.iter().filter_map(|f| f.converged_ms).collect();
            KindStats {
                kind,
                count: list.len() as u64,
                outage_median_ms: median(&outages),
                outage_max_ms: outages.iter().copied().max().unwrap_or(0),
                converged_median_ms: median(&converged),
                converged_max_ms: converged.iter().copied().max().unwrap_or(0),
                lost: list.iter().map(|f| f.lost).sum(),
            }
        })
        .collect();

    let writes = WriteStats {
        attempts: log.attempts.len() as u64,
        acked: acked.len() as u64,
        acked_direct: acked
            .iter()
            .filter(|a| a.client >= DIRECT_WRITER_BASE)
            .count() as u64,
        lost: lost_total,
        final_rows: log.final_rows.as_ref().map_or(0, |f| f.rows.len() as u64),
    };

    Verdict {
        passed: checks.iter().all(|c| c.passed),
        setup,
        duration_ms: end.saturating_sub(start),
        checks,
        writes,
        kinds,
        faults: summaries,
        timeline: timeline(&events, start),
    }
}

fn median(values: &[u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2
    } else {
        v[mid]
    }
}

/// The longest stretch without an acknowledgement that touches
/// `[from, until]`, measured between acknowledgements (or to `end` when
/// none came after).
fn longest_gap(acks: &[u64], from: u64, until: u64, end: u64) -> u64 {
    // The last acknowledgement before `from`, then every one up to the
    // first after `until`.
    let first = acks.partition_point(|&t| t < from);
    let mut prev = if first > 0 { acks[first - 1] } else { from };
    let mut longest = 0;
    for &t in &acks[first..] {
        longest = longest.max(t - prev);
        prev = t;
        if t > until {
            return longest;
        }
    }
    longest.max(end.saturating_sub(prev))
}

/// Faults that can take a primary away without a clean demotion: its last
/// acknowledged commits may not have reached a replica.
fn may_lose_unreplicated(kind: &str) -> bool {
    !matches!(kind, "switchover" | "manager-kill" | "managers-restart")
}

fn lost_writes(
    log: &Log,
    start: u64,
    acked: &[&Attempt],
    faults: &[FaultSpan],
    sync: bool,
    ttl: u64,
) -> (CheckResult, BTreeMap<u32, u64>, u64) {
    let name = "lost writes".to_string();
    let Some(final_rows) = &log.final_rows else {
        return (
            CheckResult {
                name,
                passed: false,
                summary: "the final primary was never read: nothing can be said about lost writes"
                    .into(),
                examples: Vec::new(),
            },
            BTreeMap::new(),
            0,
        );
    };
    let present: HashSet<(u32, u64)> = final_rows.rows.iter().copied().collect();
    let mut by_fault: BTreeMap<u32, u64> = BTreeMap::new();
    let mut unexcused = Vec::new();
    let mut total = 0;
    for a in acked {
        if present.contains(&(a.client, a.seq)) {
            continue;
        }
        total += 1;
        let Some((server, timeline)) = a.acked() else {
            continue;
        };
        // One lease either side of the fault: before it, the commits the
        // replicas had not received yet; after it, what an isolated or
        // agentless primary acknowledged until its lease ran out.
        let excuse = faults
            .iter()
            .filter(|f| {
                may_lose_unreplicated(f.kind)
                    && f.hosts.iter().any(|h| h == server)
                    && a.end_ms + ttl >= f.at
                    && a.start_ms <= f.at + ttl
            })
            .min_by_key(|f| f.at.abs_diff(a.end_ms));
        match excuse {
            Some(f) if !sync => *by_fault.entry(f.id).or_default() += 1,
            _ => unexcused.push(format!(
                "client {} seq {} acknowledged by {server} (timeline {timeline}) at +{} ms{}",
                a.client,
                a.seq,
                a.end_ms.saturating_sub(start),
                excuse.map_or(String::new(), |f| format!(
                    ", during fault {} ({})",
                    f.id, f.kind
                ))
            )),
        }
    }
    let excused: u64 = by_fault.values().sum();
    let passed = unexcused.is_empty();
    let summary = if sync {
        format!(
            "{total} of {} acknowledged writes missing from the final primary {} (synchronous mode: must be 0)",
            acked.len(),
            final_rows.primary
        )
    } else {
        format!(
            "{total} of {} acknowledged writes missing from the final primary {}; {excused} of them acknowledged within one lease of a fault on the node that took them (asynchronous mode allows that), {} not",
            acked.len(),
            final_rows.primary,
            unexcused.len()
        )
    };
    (
        CheckResult {
            name,
            passed,
            summary,
            examples: unexcused.into_iter().take(EXAMPLES).collect(),
        },
        by_fault,
        total,
    )
}

fn overlapping_acks(acked: &[&Attempt]) -> CheckResult {
    // A term: one node writable on one timeline (a promotion always starts
    // a new timeline; a restart in place continues the term). Per term, its
    // earliest acknowledgement and its latest send.
    struct Term<'a> {
        first_acked: &'a Attempt,
        last_sent: &'a Attempt,
    }
    let mut terms: BTreeMap<(&str, u32), Term> = BTreeMap::new();
    for a in acked {
        let Some((server, timeline)) = a.acked() else {
            continue;
        };
        let t = terms.entry((server, timeline)).or_insert(Term {
            first_acked: a,
            last_sent: a,
        });
        if a.start_ms > t.last_sent.start_ms {
            t.last_sent = a;
        }
        if a.end_ms < t.first_acked.end_ms {
            t.first_acked = a;
        }
    }
    // X wrote after Y had written and Y wrote after X had written: the two
    // terms interleave, whatever their order was meant to be.
    let after = |x: &Term, y: &Term| x.last_sent.start_ms > y.first_acked.end_ms;
    let list: Vec<(&(&str, u32), &Term)> = terms.iter().collect();
    let mut examples = Vec::new();
    for (i, ((xs, xt), x)) in list.iter().enumerate() {
        for ((ys, yt), y) in &list[i + 1..] {
            if xs != ys && after(x, y) && after(y, x) {
                examples.push(format!(
                    "{xs} (timeline {xt}) took client {} seq {} sent at {} ms, after {ys} (timeline {yt}) had acknowledged client {} seq {} at {} ms; and {ys} took client {} seq {} sent at {} ms, after {xs} had acknowledged client {} seq {} at {} ms",
                    x.last_sent.client,
                    x.last_sent.seq,
                    x.last_sent.start_ms,
                    y.first_acked.client,
                    y.first_acked.seq,
                    y.first_acked.end_ms,
                    y.last_sent.client,
                    y.last_sent.seq,
                    y.last_sent.start_ms,
                    x.first_acked.client,
                    x.first_acked.seq,
                    x.first_acked.end_ms,
                ));
            }
        }
    }
    CheckResult {
        name: "overlapping acknowledgements".into(),
        passed: examples.is_empty(),
        summary: format!(
            "{} pairs of nodes acknowledging writes at the same time, over {} terms (a node on a timeline)",
            examples.len(),
            terms.len()
        ),
        examples: examples.into_iter().take(EXAMPLES).collect(),
    }
}

fn acks_after_newer_epoch(events: &[Stamped], acked: &[&Attempt]) -> CheckResult {
    let mut epochs: Vec<(u64, u64, &str)> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Epoch { epoch, primary, .. } if !primary.is_empty() => {
                Some((e.at_ms, *epoch, primary.as_str()))
            }
            _ => None,
        })
        .collect();
    epochs.sort_unstable();
    let mut bad = Vec::new();
    for a in acked {
        let Some((server, _)) = a.acked() else {
            continue;
        };
        // The newest epoch decided before this write was sent.
        let i = epochs.partition_point(|(at, _, _)| *at < a.start_ms);
        if i == 0 {
            continue;
        }
        let (at, epoch, primary) = epochs[i - 1];
        if primary != server {
            bad.push(format!(
                "client {} seq {} sent at {} ms was acknowledged by {server}, but epoch {epoch} made {primary} the primary at {at} ms",
                a.client, a.seq, a.start_ms
            ));
        }
    }
    CheckResult {
        name: "writes after a newer epoch".into(),
        passed: bad.is_empty(),
        summary: format!(
            "{} writes acknowledged by a node after an epoch naming another primary ({} epochs)",
            bad.len(),
            epochs.len()
        ),
        examples: bad.into_iter().take(EXAMPLES).collect(),
    }
}

fn liveness(events: &[Stamped], faults: &[FaultSpan]) -> CheckResult {
    let mut bad = Vec::new();
    // After each fault's heal (those that overlapped the next fault are
    // judged with it), and at the end.
    let mut times = Vec::new();
    let mut heals = 0;
    let mut at_end = None;
    for e in events {
        match &e.event {
            Event::Converged { id: 0, took_ms } => at_end = Some(*took_ms),
            Event::Converged { took_ms, .. } => {
                heals += 1;
                times.push(*took_ms);
            }
            Event::NotConverged {
                id,
                waited_ms,
                state,
            } => {
                if *id == 0 {
                    bad.push(format!(
                        "at the end, the cluster was not whole {} s after the final heal: {state}",
                        waited_ms / 1000
                    ));
                } else {
                    heals += 1;
                    bad.push(format!(
                        "after fault {id}, the cluster was not whole {} s after it was healed: {state}",
                        waited_ms / 1000
                    ));
                }
            }
            _ => {}
        }
    }
    let overlapped = faults
        .iter()
        .filter(|f| f.converged.is_none() && !f.not_converged)
        .count();
    let end = match at_end {
        Some(ms) => format!("; at the end after {ms} ms"),
        None => {
            if !bad.iter().any(|b| b.starts_with("at the end")) {
                bad.push("the cluster was never seen whole after the final heal".into());
            }
            String::new()
        }
    };
    CheckResult {
        name: "liveness".into(),
        passed: bad.is_empty(),
        summary: format!(
            "whole again after {} of {heals} heals (median {} ms, max {} ms){end}{}",
            times.len(),
            median(&times),
            times.iter().copied().max().unwrap_or(0),
            if overlapped == 0 {
                String::new()
            } else {
                format!("; {overlapped} faults overlapped the next and were judged with it")
            }
        ),
        examples: bad.into_iter().take(EXAMPLES).collect(),
    }
}

fn timeline(events: &[Stamped], start: u64) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|e| {
            let what = match &e.event {
                Event::Started { setup } => format!(
                    "started: {} nodes, {} managers, {} mode, seed {}",
                    setup.nodes.len(),
                    setup.managers,
                    if setup.sync { "sync" } else { "async" },
                    setup.seed
                ),
                Event::Fault {
                    id,
                    kind,
                    hosts,
                    detail,
                    ..
                } => format!("fault {id}: {kind} on {} ({detail})", hosts.join(",")),
                Event::Healed { id } => format!("fault {id} healed"),
                Event::Converged { id: 0, took_ms } => {
                    format!("whole again at the end after {took_ms} ms")
                }
                Event::Converged { id, took_ms } => {
                    format!("fault {id}: whole again after {took_ms} ms")
                }
                Event::NotConverged { id, state, .. } => {
                    format!("fault {id}: NOT whole again: {state}")
                }
                Event::Epoch {
                    epoch,
                    kind,
                    primary,
                    old_primary,
                    ..
                } => {
                    if old_primary.is_empty() {
                        format!("epoch {epoch}: {kind}, primary {primary}")
                    } else {
                        format!("epoch {epoch}: {kind} {old_primary} -> {primary}")
                    }
                }
                Event::Operation {
                    id,
                    command,
                    accepted,
                    answer,
                } => format!(
                    "fault {id}: `{command}` {}: {answer}",
                    if *accepted { "accepted" } else { "refused" }
                ),
                Event::Skipped { kind, why } => format!("{kind} skipped: {why}"),
                Event::Interrupted { why } => format!("interrupted: {why}"),
            };
            (e.at_ms.saturating_sub(start), what)
        })
        .collect()
}

#[cfg(test)]
mod tests;
