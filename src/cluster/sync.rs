//! `synchronous_standby_names`: rendering the committed sync set for
//! PostgreSQL and reading back what a primary actually has.
//!
//! Safety rests on one invariant: the names PostgreSQL waits for are always
//! a subset of the committed set, with the same `k`. Then every
//! acknowledged commit is on at least `k` members of the committed set, and
//! hearing from `n - k + 1` of its `n` members finds one that has it.

use std::collections::BTreeSet;

use super::config::SyncMode;

/// A name no standby ever has: waiting for it blocks commits, which is what
/// strict mode wants when no standby is available.
pub const NOBODY: &str = "pgquorum_nobody";

/// The application name of the node's keeper when it stands as its
/// primary's synchronous standby (the commit gate, `keeper/gate.rs`): it
/// acknowledges WAL only while the primary's lease is valid.
pub const GATE: &str = "pgquorum_keeper";

/// The value for `synchronous_standby_names` on a primary whose committed
/// sync set is `set`. Where commits would wait for nobody (asynchronous
/// mode, or a non-strict empty set) they wait for the node's own keeper
/// instead when `gate` is on: a commit then completes only while the lease
/// is valid.
pub fn render(
    mode: SyncMode,
    count: u32,
    strict: bool,
    gate: bool,
    set: &BTreeSet<String>,
) -> String {
    let nobody = || if gate { gate_only() } else { String::new() };
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

/// The value that makes commits wait for the commit gate alone.
pub fn gate_only() -> String {
    format!("FIRST 1 (\"{GATE}\")")
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

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn renders_first_and_any() {
        assert_eq!(
            render(SyncMode::On, 1, false, false, &set(&["b", "c"])),
            "FIRST 1 (\"b\",\"c\")"
        );
        assert_eq!(
            render(SyncMode::Quorum, 2, false, false, &set(&["b", "c"])),
            "ANY 2 (\"b\",\"c\")"
        );
        assert_eq!(render(SyncMode::Off, 1, false, false, &set(&["b"])), "");
        // With the commit gate, nobody becomes the keeper; a real set or
        // strict mode's blocker stay as they are.
        let gated = render(SyncMode::Off, 1, false, true, &set(&["b"]));
        assert_eq!(gated, format!("FIRST 1 (\"{GATE}\")"));
        assert_eq!(gated, gate_only());
        assert!(parse_names(&gated).is_empty());
        assert_eq!(render(SyncMode::On, 1, false, true, &set(&[])), gated);
        assert!(render(SyncMode::On, 1, true, true, &set(&[])).contains(NOBODY));
        assert_eq!(
            render(SyncMode::On, 1, false, true, &set(&["b"])),
            "FIRST 1 (\"b\")"
        );
    }

    #[test]
    fn empty_set_blocks_only_in_strict_mode() {
        assert_eq!(render(SyncMode::On, 1, false, false, &set(&[])), "");
        assert!(render(SyncMode::On, 1, true, false, &set(&[])).contains(NOBODY));
        // Non-strict clamps k to what exists; strict keeps k and waits.
        assert_eq!(
            render(SyncMode::On, 2, false, false, &set(&["b"])),
            "FIRST 1 (\"b\")"
        );
        assert_eq!(
            render(SyncMode::On, 2, true, false, &set(&["b"])),
            "FIRST 2 (\"b\")"
        );
    }

    #[test]
    fn parses_back() {
        assert_eq!(parse_names("ANY 2 (\"b\",\"c\")"), set(&["b", "c"]));
        assert_eq!(parse_names("b, c"), set(&["b", "c"]));
        assert_eq!(parse_names(""), set(&[]));
        assert_eq!(
            parse_names(&render(SyncMode::On, 1, true, false, &set(&[]))),
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
