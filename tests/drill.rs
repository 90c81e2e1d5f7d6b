//! `pgquorum drill` as an operator runs it: a short drill with every kind of
//! fault, in asynchronous and in synchronous mode, must pass its own
//! checks; and its checker, run offline on a real drill's logs that were
//! then doctored, must catch the violation.
//!
//! Needs root (network namespaces); skipped with a message otherwise, or
//! failing when PGQUORUM_REQUIRE_ROOT_TESTS is set (CI).

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, stderr, stdout};

fn drill(dir: &Path, extra: &[&str]) -> (serde_json::Value, std::process::Output) {
    let out = Command::new(bin())
        .args(["drill", "--json", "--dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("run pgquorum drill");
    let verdict = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill printed no verdict ({e}); stdout:\n{}\nstderr:\n{}",
            stdout(&out),
            stderr(&out)
        )
    });
    (verdict, out)
}

fn check(verdict: &serde_json::Value, name: &str) -> bool {
    verdict["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check named {name}: {verdict}"))["passed"]
        .as_bool()
        .expect("passed")
}

/// What a failed drill says, most telling first: the checks, the timeline
/// (faults, epochs, convergence), then the drill's own output — the whole
/// JSON would push the timeline out of a CI log.
fn compact(v: &serde_json::Value, stderr: &str) -> String {
    let mut out = String::from("checks:\n");
    for c in v["checks"].as_array().into_iter().flatten() {
        out += &format!(
            "  {} {}: {}\n",
            if c["passed"] == true { "ok  " } else { "FAIL" },
            c["name"].as_str().unwrap_or("?"),
            c["summary"].as_str().unwrap_or("?")
        );
        for e in c["examples"].as_array().into_iter().flatten().take(5) {
            out += &format!("       {}\n", e.as_str().unwrap_or("?"));
        }
    }
    out += "timeline:\n";
    for e in v["timeline"].as_array().into_iter().flatten() {
        out += &format!("  +{} ms {}\n", e[0], e[1].as_str().unwrap_or("?"));
    }
    out + "stderr:\n" + stderr
}

/// One fault of every kind (the plan draws every kind once before any
/// twice), then the final heal: every check passes, and the faults really
/// did something — failovers happened, writes flowed through the
/// multi-host string and straight to nodes.
fn short_drill(sync: bool, seed: &str, extra: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgq-drill-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    // Two writers through the multi-host string (plus one per node): the
    // two drills of this file run side by side on small CI machines.
    let mut args = vec![
        "--seed",
        seed,
        "--count",
        "15",
        "--every",
        "1s",
        "--clients",
        "2",
    ];
    if sync {
        args.push("--sync");
    }
    args.extend_from_slice(extra);
    let (v, out) = drill(&dir.path().join("run"), &args);
    let report = compact(&v, &stderr(&out));
    assert!(out.status.success(), "the drill failed: {report}");
    assert_eq!(v["passed"], true, "{report}");
    for name in [
        "lost writes",
        "overlapping acknowledgements",
        "writes after a newer epoch",
        "liveness",
    ] {
        assert!(check(&v, name), "check {name} failed: {report}");
    }
    let kinds: Vec<String> = v["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .map(|f| f["kind"].as_str().expect("kind").to_string())
        .collect();
    // Every kind `--faults all` draws from.
    for k in pgquorum::drill::fault::Kind::ALL.map(|k| k.name()) {
        assert!(kinds.iter().any(|x| x == k), "no {k} fault ran: {kinds:?}");
    }
    let epochs = v["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|e| e[1].as_str().is_some_and(|s| s.starts_with("epoch ")))
        .count();
    assert!(
        epochs >= 3,
        "fewer than two failovers in 15 faults: {report}"
    );
    let w = &v["writes"];
    assert!(w["acked"].as_u64().expect("acked") > 1000, "{report}");
    assert!(
        w["acked_direct"].as_u64().expect("direct") > 100,
        "{report}"
    );
    if sync {
        assert_eq!(w["lost"], 0, "{report}");
    }
    // The logs stay for a post-mortem, the data does not (no --keep).
    let run = dir.path().join("run");
    for f in ["events.jsonl", "writes.jsonl", "final.json", "report.json"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    assert!(
        !run.join("n1").join("data").exists(),
        "data kept without --keep"
    );
    assert!(
        pgquorum::process::processes_under(&run).is_empty(),
        "processes left behind"
    );
    dir
}

#[test]
fn async_drill_with_every_fault_passes_its_checks() {
    if !common::netns::usable("async_drill_with_every_fault_passes_its_checks") {
        return;
    }
    // Managers on hosts of their own.
    short_drill(false, "11", &[]);
}

#[test]
fn sync_drill_with_every_fault_passes_and_its_checker_catches_a_lost_write() {
    if !common::netns::usable(
        "sync_drill_with_every_fault_passes_and_its_checker_catches_a_lost_write",
    ) {
        return;
    }
    // Managers on the nodes' hosts, as in a small real deployment.
    let dir = short_drill(true, "12", &["--colocated"]);
    let run = dir.path().join("run");

    // Judged again offline, the same logs pass...
    let again = Command::new(bin())
        .args(["drill", "--json", "--check"])
        .arg(&run)
        .output()
        .expect("drill --check");
    assert!(again.status.success(), "{}", stderr(&again));

    // ... and once an acknowledged row is taken off the final primary,
    // the checker says so, names it, and exits 1.
    let writes = std::fs::read_to_string(run.join("writes.jsonl")).expect("writes");
    let acked: serde_json::Value = writes
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|a| a["outcome"]["result"] == "acked")
        .expect("an acknowledged write");
    let mut fin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("final.json")).expect("final"))
            .expect("json");
    let rows = fin["rows"].as_array_mut().expect("rows");
    let before = rows.len();
    rows.retain(|r| !(r[0] == acked["client"] && r[1] == acked["seq"]));
    assert_eq!(
        rows.len(),
        before - 1,
        "the acknowledged row is on the final primary"
    );
    std::fs::write(run.join("final.json"), fin.to_string()).expect("write final");
    let doctored = Command::new(bin())
        .args(["drill", "--check"])
        .arg(&run)
        .output()
        .expect("drill --check");
    assert_eq!(doctored.status.code(), Some(1), "{}", stdout(&doctored));
    let text = stdout(&doctored);
    assert!(
        text.contains("FAIL lost writes")
            && text.contains(&format!("client {} seq {}", acked["client"], acked["seq"])),
        "{text}"
    );
}

#[test]
fn bad_drill_flags_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let out = Command::new(bin())
        .args(["drill", "--faults", "host-crash,disk-full", "--dir"])
        .arg(&run)
        .output()
        .expect("drill");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown fault `disk-full`"),
        "{}",
        stderr(&out)
    );
    assert!(!run.exists(), "a refused drill created its directory");

    // A directory that holds something else is never used (nor emptied).
    std::fs::create_dir_all(&run).expect("mkdir");
    std::fs::write(run.join("precious"), "data").expect("write");
    let out = Command::new(bin())
        .args(["drill", "--count", "1", "--dir"])
        .arg(&run)
        .output()
        .expect("drill");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(run.join("precious")).expect("kept"),
        "data"
    );

    for (flags, says) in [
        (&["--managers", "2"][..], "give 1, 3 or 5 managers"),
        (&["--nodes", "1"][..], "2 to 9 nodes"),
        (
            &["--colocated", "--nodes", "2"][..],
            "need at least 3 nodes",
        ),
        (&["--set", "ttl"][..], "give KEY=VALUE"),
    ] {
        let out = Command::new(bin())
            .arg("drill")
            .args(flags)
            .output()
            .expect("drill");
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        assert!(stderr(&out).contains(says), "{flags:?}: {}", stderr(&out));
    }
    let out = Command::new(bin())
        .args(["drill", "--check"])
        .arg(dir.path().join("nothing-here"))
        .output()
        .expect("drill --check");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is this the directory of a drill"),
        "{}",
        stderr(&out)
    );
}
