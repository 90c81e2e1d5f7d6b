//! `synchronous_standby_names`: rendering the committed sync set for
//! PostgreSQL and reading back what a primary actually has.
//!
//! Safety rests on one invariant: the names PostgreSQL waits for are always
//! a subset of the committed set, with the same `k`. Then every
//! acknowledged commit is on at least `k` members of the committed set, and
//! hearing from `n - k + 1` of its `n` members finds one that has it.

use std::collections::BTreeSet;

use super::config::{DynamicConfig, SyncMode};

/// A name no standby ever has: waiting for it blocks commits, which is what
/// strict mode wants when no standby is available.
pub const NOBODY: &str = "pgquorum_nobody";

/// The application name of the node's keeper when it stands as its
/// primary's synchronous standby (the commit gate, `keeper/gate.rs`): it
/// acknowledges WAL only while the primary's lease is valid.
pub const GATE: &str = "pgquorum_keeper";

/// The value that makes commits wait for the commit gate alone.
pub const GATE_ONLY: &str = "FIRST 1 (\"pgquorum_keeper\")";

/// The value for `synchronous_standby_names` on a primary whose committed
/// sync set is `set`. Where commits would wait for nobody (asynchronous
/// mode, or a non-strict empty set) they wait for the node's own keeper
/// instead — with `lease_gated_commits`, and if its keeper `can_gate` — so
/// that a commit completes only while the lease is valid.
pub fn render(config: &DynamicConfig, set: &BTreeSet<String>, can_gate: bool) -> String {
    let nobody = || {
        if config.lease_gated_commits && can_gate {
            GATE_ONLY.to_string()
        } else {
            String::new()
        }
    };
    let (mode, count, strict) = (config.sync_mode, config.sync_count, config.sync_strict);
    if mode == SyncMode::Off {
        return nobody();
    }
    if set.is_empty() {
        return if strict {
            format!("FIRST 1 (\"{NOBODY}\")")
        } else {
            nobody()
        };
    }
    let k = if strict {
        count as usize
    } else {
        (count as usize).min(set.len())
    };
    let names = set
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(",");
    let method = if mode == SyncMode::Quorum {
        "ANY"
    } else {
        "FIRST"
    };
    format!("{method} {k} ({names})")
}

/// The standby names in a `synchronous_standby_names` value (without the
/// `FIRST k`/`ANY k` wrapper and quotes). `*`, [`NOBODY`] and [`GATE`] are
/// left out: none of them is a member.
pub fn parse_names(value: &str) -> BTreeSet<String> {
    let inner = match (value.find('('), value.rfind(')')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value,
    };
    inner
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty() && s != "*" && s != NOBODY && s != GATE)
        .collect()
}

/// How many members of a sync set of size `n` must report before the most
/// advanced of them is sure to hold every acknowledged commit.
pub fn reports_needed(n: usize, count: u32) -> usize {
    let k = (count as usize).clamp(1, n.max(1));
    n + 1 - k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sync_mode: SyncMode, sync_count: u32, sync_strict: bool) -> DynamicConfig {
        DynamicConfig {
            sync_mode,
            sync_count,
            sync_strict,
            ..DynamicConfig::default()
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn renders_first_and_any() {
        assert_eq!(
            render(&cfg(SyncMode::On, 1, false), &set(&["b", "c"]), false),
            "FIRST 1 (\"b\",\"c\")"
        );
        assert_eq!(
            render(&cfg(SyncMode::Quorum, 2, false), &set(&["b", "c"]), false),
            "ANY 2 (\"b\",\"c\")"
        );
        assert_eq!(
            render(&cfg(SyncMode::Off, 1, false), &set(&["b"]), false),
            ""
        );
        // With the commit gate, nobody becomes the keeper; a real set or
        // strict mode's blocker stay as they are.
        let gated = render(&cfg(SyncMode::Off, 1, false), &set(&["b"]), true);
        assert_eq!(gated, format!("FIRST 1 (\"{GATE}\")"));
        assert_eq!(gated, GATE_ONLY);
        // Not for a keeper that cannot gate, nor with the gate turned off.
        assert_eq!(render(&cfg(SyncMode::Off, 1, false), &set(&[]), false), "");
        let off = DynamicConfig {
            lease_gated_commits: false,
            ..DynamicConfig::default()
        };
        assert_eq!(render(&off, &set(&[]), true), "");
        assert!(parse_names(&gated).is_empty());
        assert_eq!(render(&cfg(SyncMode::On, 1, false), &set(&[]), true), gated);
        assert!(render(&cfg(SyncMode::On, 1, true), &set(&[]), true).contains(NOBODY));
        assert_eq!(
            render(&cfg(SyncMode::On, 1, false), &set(&["b"]), true),
            "FIRST 1 (\"b\")"
        );
    }

    #[test]
    fn empty_set_blocks_only_in_strict_mode() {
        assert_eq!(render(&cfg(SyncMode::On, 1, false), &set(&[]), false), "");
        assert!(render(&cfg(SyncMode::On, 1, true), &set(&[]), false).contains(NOBODY));
        // Non-strict clamps k to what exists; strict keeps k and waits.
        assert_eq!(
            render(&cfg(SyncMode::On, 2, false), &set(&["b"]), false),
            "FIRST 1 (\"b\")"
        );
        assert_eq!(
            render(&cfg(SyncMode::On, 2, true), &set(&["b"]), false),
            "FIRST 2 (\"b\")"
        );
    }

    #[test]
    fn parses_back() {
        assert_eq!(parse_names("ANY 2 (\"b\",\"c\")"), set(&["b", "c"]));
        assert_eq!(parse_names("b, c"), set(&["b", "c"]));
        assert_eq!(parse_names(""), set(&[]));
        assert_eq!(
            parse_names(&render(&cfg(SyncMode::On, 1, true), &set(&[]), false)),
            set(&[])
        );
    }

    #[test]
    fn quorum_arithmetic() {
        assert_eq!(reports_needed(3, 1), 3);
        assert_eq!(reports_needed(3, 2), 2);
        assert_eq!(reports_needed(2, 2), 1);
        assert_eq!(reports_needed(1, 1), 1);
    }
}
