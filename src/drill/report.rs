//! The drill's verdict for people: the timeline, figures per fault kind,
//! and the checks. (`--json` prints the [`Verdict`] itself.)

use std::fmt::Write;

use super::check::Verdict;

fn secs(ms: u64) -> String {
    format!("{:.2}", ms as f64 / 1000.0)
}

/// The whole report as text.
pub fn render(v: &Verdict) -> String {
    let mut out = String::new();
    if let Some(s) = &v.setup {
        let _ = writeln!(
            out,
            "pgquorum drill: seed {}, {} mode, {} nodes, {} managers{}, {}{}, {} s, {} faults",
            s.seed,
            if s.sync { "sync" } else { "async" },
            s.nodes.len(),
            s.managers,
            if s.colocated { " (colocated)" } else { "" },
            if s.namespaces {
                "network namespaces"
            } else {
                "loopback (process faults only)"
            },
            if s.overlap {
                ", overlapping faults"
            } else {
                ""
            },
            v.duration_ms / 1000,
            v.faults.len()
        );
    }
    let _ = writeln!(out, "\nTimeline (seconds from the start):");
    for (at, what) in &v.timeline {
        let _ = writeln!(out, "  {:>8}  {what}", secs(*at));
    }
    let _ = writeln!(
        out,
        "\nWrites: {} attempts, {} acknowledged ({} by direct writers), {} rows on the final primary, {} acknowledged rows missing",
        v.writes.attempts, v.writes.acked, v.writes.acked_direct, v.writes.final_rows, v.writes.lost
    );
    if !v.kinds.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<18} {:>5} {:>15} {:>11} {:>18} {:>11} {:>6}",
            "FAULT",
            "COUNT",
            "OUTAGE MEDIAN s",
            "OUTAGE MAX",
            "WHOLE AGAIN MEDIAN",
            "WHOLE MAX",
            "LOST"
        );
        for k in &v.kinds {
            let _ = writeln!(
                out,
                "{:<18} {:>5} {:>15} {:>11} {:>18} {:>11} {:>6}",
                k.kind,
                k.count,
                secs(k.outage_median_ms),
                secs(k.outage_max_ms),
                secs(k.converged_median_ms),
                secs(k.converged_max_ms),
                k.lost
            );
        }
    }
    let _ = writeln!(out, "\nChecks:");
    for c in &v.checks {
        let _ = writeln!(
            out,
            "  {} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.summary
        );
        for e in &c.examples {
            let _ = writeln!(out, "         {e}");
        }
    }
    if v.passed {
        let _ = writeln!(out, "\nPASSED");
    } else {
        let _ = writeln!(
            out,
            "\nFAILED{}",
            v.setup.as_ref().map_or(String::new(), |s| format!(
                " — reproduce with: {}",
                s.command
            ))
        );
    }
    out
}
