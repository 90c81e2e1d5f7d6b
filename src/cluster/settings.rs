//! PostgreSQL parameters checked before they are committed.
//!
//! A parameter set cluster-wide with `pgquorum config set
//! postgresql.parameters.NAME=VALUE` lands in every node's configuration
//! file. PostgreSQL reads a misspelt name or a bad value there only at the
//! next reload (where it logs and ignores it) or the next start (where it
//! refuses to start, and a restart loops on FATAL). So the leader checks
//! every change first, against the catalog a running server reported
//! (`pg_settings`: types, units, ranges, enum values, contexts), with the
//! rules PostgreSQL's own `guc.c` applies to the configuration file.
//!
//! Pure: the catalog comes in, a verdict comes out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The type of a parameter (`pg_settings.vartype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    Bool,
    Integer,
    Real,
    String,
    Enum,
}

/// One row of `pg_settings`, as far as checking a value needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub vartype: VarType,
    /// The base unit (`8kB`, `kB`, `MB`, `ms`, `s`, `min`…), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Bounds in base units (integers and reals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The documented values of an enum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enumvals: Vec<String>,
    /// `postmaster`, `sighup`, `user`, `internal`…
    pub context: String,
}

/// What a running server told about its parameters, and which of them the
/// node's own configuration (`agent.toml` `[postgresql.parameters]`) sets.
/// Sent by an agent once per session and after its server restarts, not
/// with every heartbeat.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ServerSettings {
    /// `server_version_num`.
    pub server_version: u32,
    pub catalog: BTreeMap<String, ParamSpec>,
    /// Parameters this node sets itself: they win over cluster-wide ones.
    #[serde(default)]
    pub local: BTreeMap<String, String>,
}

/// What a valid change needs to take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A reload applies it.
    Reload,
    /// Only a restart applies it (`context = postmaster`).
    Restart,
    /// A custom (`prefix.name`) parameter the server does not know yet
    /// (its extension is not loaded): PostgreSQL keeps it as a placeholder.
    Placeholder,
}

/// Check `name = value` against the catalog. An empty value removes the
/// setting and is always allowed. The error says what is wrong and, for a
/// misspelt name, what was probably meant.
pub fn check(
    catalog: &BTreeMap<String, ParamSpec>,
    name: &str,
    value: &str,
) -> Result<Effect, String> {
    let lower = name.to_ascii_lowercase();
    let Some(spec) = catalog.get(&lower) else {
        // Removing a setting is always allowed: it may be the misspelt or
        // obsolete one that keeps the server from starting.
        if value.is_empty() {
            return Ok(Effect::Reload);
        }
        // A custom `prefix.name` is a placeholder until its extension is
        // loaded — unless the extension is loaded (the catalog has other
        // names with that prefix), when it is a misspelling.
        let prefix = lower.split_once('.').map(|(p, _)| format!("{p}."));
        if let Some(prefix) = prefix {
            if !catalog.keys().any(|k| k.starts_with(&prefix)) {
                return Ok(Effect::Placeholder);
            }
        }
        return Err(unknown(catalog, &lower));
    };
    if spec.context == "internal" {
        return Err(format!(
            "{lower} is read-only: it is fixed when PostgreSQL is built or the cluster is initialised"
        ));
    }
    if !value.is_empty() {
        check_value(spec, value.trim())
            .map_err(|why| format!("invalid value {value:?} for {lower}: {why}"))?;
    }
    Ok(if spec.context == "postmaster" {
        Effect::Restart
    } else {
        Effect::Reload
    })
}

/// The verdict on a set of parameter changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Review {
    /// Why the change must be refused (nothing is committed).
    pub errors: Vec<String>,
    /// What the operator should know: restarts needed, nodes whose own
    /// setting wins, a check that could not be made.
    pub notes: Vec<String>,
}

/// Review parameter changes (`name -> value`, empty to remove) against what
/// the cluster's servers reported. The catalog of `preferred` (the primary)
/// is used when it reported one, else any node's: replicas run the same
/// major version. With no catalog at all (no server has run yet) nothing
/// can be checked, which the notes say.
pub fn review(
    changes: &BTreeMap<String, String>,
    reported: &BTreeMap<String, std::sync::Arc<ServerSettings>>,
    preferred: Option<&str>,
) -> Review {
    let mut review = Review::default();
    if changes.is_empty() {
        return review;
    }
    let settings = preferred
        .and_then(|p| reported.get(p))
        .or_else(|| reported.values().next());
    let Some(settings) = settings else {
        review.notes.push(
            "no PostgreSQL server has reported its parameters yet: the values were not checked"
                .to_string(),
        );
        return review;
    };
    let mut restart = Vec::new();
    for (name, value) in changes {
        match check(&settings.catalog, name, value) {
            Ok(Effect::Restart) => restart.push(name.to_ascii_lowercase()),
            Ok(Effect::Placeholder) => review.notes.push(format!(
                "{name} is not known to the running server (its extension is not loaded): \
                 it is kept as a placeholder and not checked"
            )),
            Ok(_) => {}
            Err(e) => review.errors.push(e),
        }
        let lower = name.to_ascii_lowercase();
        for (node, s) in reported {
            if let Some(own) = s.local.get(&lower) {
                review.notes.push(format!(
                    "{node} sets {lower} = {own} in its own agent.toml, which wins over the cluster-wide value there"
                ));
            }
        }
    }
    if !restart.is_empty() {
        review.notes.push(format!(
            "{} only take{} effect after a restart: `pgquorum node restart --role any --pending`",
            restart.join(", "),
            if restart.len() == 1 { "s" } else { "" }
        ));
    }
    review
}

fn unknown(catalog: &BTreeMap<String, ParamSpec>, name: &str) -> String {
    let mut near: Vec<(f64, &String)> = catalog
        .keys()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score >= 0.85)
        .collect();
    near.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut message = format!("unknown PostgreSQL parameter {name:?}");
    if let Some((_, best)) = near.first() {
        message.push_str(&format!("; did you mean {best:?}?"));
    } else {
        message.push_str("; see the server's pg_settings for the names it knows");
    }
    message
}

fn check_value(spec: &ParamSpec, value: &str) -> Result<(), String> {
    match spec.vartype {
        VarType::Bool => parse_bool(value)
            .map(|_| ())
            .ok_or_else(|| "expected a boolean (on, off, true, false, yes, no, 1, 0)".to_string()),
        VarType::Integer | VarType::Real => {
            let n = parse_number(
                value,
                spec.unit.as_deref(),
                spec.vartype == VarType::Integer,
            )?;
            let below = spec.min.is_some_and(|min| n < min);
            let above = spec.max.is_some_and(|max| n > max);
            if below || above {
                return Err(format!(
                    "outside the valid range {} .. {}{}",
                    show(spec.min),
                    show(spec.max),
                    spec.unit
                        .as_deref()
                        .map(|u| format!(" (in units of {u})"))
                        .unwrap_or_default()
                ));
            }
            Ok(())
        }
        VarType::Enum => {
            let v = value.to_ascii_lowercase();
            let listed = spec.enumvals.iter().any(|e| e.eq_ignore_ascii_case(&v));
            if listed || hidden_enum_alias(spec, &v) {
                Ok(())
            } else {
                Err(format!("expected one of: {}", spec.enumvals.join(", ")))
            }
        }
        VarType::String => Ok(()),
    }
}

fn show(bound: Option<f64>) -> String {
    bound.map_or_else(|| "?".to_string(), |b| b.to_string())
}

/// Spellings PostgreSQL accepts but does not list in `enumvals`: the
/// boolean ones for enums that grew out of booleans (`synchronous_commit`,
/// `huge_pages`, `constraint_exclusion`…), old `wal_level` names, and
/// `debug` (= `debug2`) for the message levels.
fn hidden_enum_alias(spec: &ParamSpec, value: &str) -> bool {
    let has = |v: &str| spec.enumvals.iter().any(|e| e.eq_ignore_ascii_case(v));
    let bool_spelling = ["true", "false", "yes", "no", "1", "0"].contains(&value);
    (bool_spelling && has("on") && has("off"))
        || (has("replica") && has("logical") && ["archive", "hot_standby"].contains(&value))
        || (has("debug2") && value == "debug")
}

/// PostgreSQL's `parse_bool`: any unique prefix of true/false/yes/no,
/// on/off (at least two letters), 1 and 0; case-insensitive.
pub fn parse_bool(value: &str) -> Option<bool> {
    let v = value.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || v == "1" || v == "on" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || v == "0" || prefix_of("off", 2) {
        Some(false)
    } else {
        None
    }
}

/// A unit PostgreSQL accepts in a value, and its size in bytes or
/// microseconds (memory and time never mix).
fn unit_factor(unit: &str) -> Option<(bool, f64)> {
    const KB: f64 = 1024.0;
    Some(match unit {
        "B" => (true, 1.0),
        "kB" => (true, KB),
        "MB" => (true, KB * KB),
        "GB" => (true, KB * KB * KB),
        "TB" => (true, KB * KB * KB * KB),
        "us" => (false, 1.0),
        "ms" => (false, 1e3),
        "s" => (false, 1e6),
        "min" => (false, 60e6),
        "h" => (false, 3600e6),
        "d" => (false, 86400e6),
        _ => return None,
    })
}

/// A parameter's base unit as `pg_settings` shows it: `8kB`, `16MB`, `ms`.
fn base_unit(unit: &str) -> Option<(bool, f64)> {
    let digits = unit.chars().take_while(|c| c.is_ascii_digit()).count();
    let (count, name) = unit.split_at(digits);
    let count: f64 = if count.is_empty() {
        1.0
    } else {
        count.parse().ok()?
    };
    let (memory, factor) = unit_factor(name)?;
    Some((memory, count * factor))
}

/// A number as PostgreSQL's `parse_int`/`parse_real` read it: decimal,
/// `0x` hex or leading-zero octal for integers, a fraction or exponent
/// allowed, then an optional unit when the parameter has one. Returned in
/// the parameter's base unit (integers rounded like PostgreSQL does).
fn parse_number(value: &str, unit: Option<&str>, integer: bool) -> Result<f64, String> {
    // The longest prefix that reads as a number; the rest is the unit.
    let split = (1..=value.len())
        .rev()
        .filter(|&i| value.is_char_boundary(i))
        .find(|&i| number_value(&value[..i], integer).is_some())
        .unwrap_or(0);
    let (number, rest) = value.split_at(split);
    let n = number_value(number, integer).ok_or_else(|| "expected a number".to_string())?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Ok(if integer { n.round() } else { n });
    }
    let hint = match unit {
        Some(u) if base_unit(u).is_some_and(|(m, _)| m) => "B, kB, MB, GB or TB",
        Some(_) => "us, ms, s, min, h or d",
        None => "",
    };
    let Some((memory, base)) = unit.and_then(base_unit) else {
        return Err("this parameter takes a plain number, without a unit".to_string());
    };
    match unit_factor(rest) {
        Some((m, factor)) if m == memory => {
            let n = n * factor / base;
            Ok(if integer { n.round() } else { n })
        }
        _ => Err(format!("valid units for this parameter are {hint}")),
    }
}

fn number_value(s: &str, integer: bool) -> Option<f64> {
    let (sign, digits) = match s.strip_prefix('-') {
        Some(d) => (-1.0, d),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    if integer {
        if let Some(hex) = digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"))
        {
            return i64::from_str_radix(hex, 16).ok().map(|v| sign * v as f64);
        }
        if digits.len() > 1 && digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit())
        {
            return i64::from_str_radix(&digits[1..], 8)
                .ok()
                .map(|v| sign * v as f64);
        }
    }
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| {
            b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'-' || b == b'+'
        })
        && digits
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.');
    if !plain {
        return None;
    }
    digits
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(|v| sign * v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(unit: Option<&str>, min: f64, max: f64, context: &str) -> ParamSpec {
        ParamSpec {
            vartype: VarType::Integer,
            unit: unit.map(str::to_string),
            min: Some(min),
            max: Some(max),
            enumvals: vec![],
            context: context.to_string(),
        }
    }

    fn spec_of(vartype: VarType, enumvals: &[&str], context: &str) -> ParamSpec {
        ParamSpec {
            vartype,
            unit: None,
            min: None,
            max: None,
            enumvals: enumvals.iter().map(|v| v.to_string()).collect(),
            context: context.to_string(),
        }
    }

    /// A few rows as PostgreSQL 15 reports them (names lower-cased, as the
    /// agent sends them).
    fn catalog() -> BTreeMap<String, ParamSpec> {
        let mut c = BTreeMap::new();
        c.insert(
            "work_mem".into(),
            int(Some("kB"), 64.0, 2147483647.0, "user"),
        );
        c.insert(
            "shared_buffers".into(),
            int(Some("8kB"), 16.0, 1073741823.0, "postmaster"),
        );
        c.insert(
            "max_wal_size".into(),
            int(Some("MB"), 2.0, 2147483647.0, "sighup"),
        );
        c.insert(
            "statement_timeout".into(),
            int(Some("ms"), 0.0, 2147483647.0, "user"),
        );
        c.insert(
            "log_min_duration_statement".into(),
            int(Some("ms"), -1.0, 2147483647.0, "superuser"),
        );
        c.insert(
            "max_connections".into(),
            int(None, 1.0, 262143.0, "postmaster"),
        );
        c.insert("block_size".into(), int(None, 8192.0, 8192.0, "internal"));
        c.insert(
            "random_page_cost".into(),
            ParamSpec {
                vartype: VarType::Real,
                unit: None,
                min: Some(0.0),
                max: Some(1.79769e308),
                enumvals: vec![],
                context: "user".into(),
            },
        );
        c.insert(
            "vacuum_cost_delay".into(),
            ParamSpec {
                vartype: VarType::Real,
                unit: Some("ms".into()),
                min: Some(0.0),
                max: Some(100.0),
                enumvals: vec![],
                context: "user".into(),
            },
        );
        c.insert(
            "synchronous_commit".into(),
            ParamSpec {
                vartype: VarType::Enum,
                unit: None,
                min: None,
                max: None,
                enumvals: ["local", "remote_write", "remote_apply", "on", "off"]
                    .map(String::from)
                    .to_vec(),
                context: "user".into(),
            },
        );
        c.insert(
            "wal_level".into(),
            ParamSpec {
                vartype: VarType::Enum,
                unit: None,
                min: None,
                max: None,
                enumvals: ["minimal", "replica", "logical"].map(String::from).to_vec(),
                context: "postmaster".into(),
            },
        );
        c.insert(
            "log_checkpoints".into(),
            ParamSpec {
                vartype: VarType::Bool,
                unit: None,
                min: None,
                max: None,
                enumvals: vec![],
                context: "sighup".into(),
            },
        );
        c.insert("timezone".into(), spec_of(VarType::String, &[], "user"));
        c.insert(
            "auto_explain.log_min_duration".into(),
            int(Some("ms"), -1.0, 2147483647.0, "superuser"),
        );
        c.insert(
            "log_min_messages".into(),
            spec_of(
                VarType::Enum,
                &[
                    "debug5", "debug4", "debug3", "debug2", "debug1", "info", "notice", "warning",
                    "error", "log", "fatal", "panic",
                ],
                "superuser",
            ),
        );
        c.insert(
            "application_name".into(),
            ParamSpec {
                vartype: VarType::String,
                unit: None,
                min: None,
                max: None,
                enumvals: vec![],
                context: "user".into(),
            },
        );
        c
    }

    #[test]
    fn good_values_are_accepted_with_what_they_need() {
        let c = catalog();
        for (name, value) in [
            ("work_mem", "64MB"),
            ("work_mem", "65536"),
            ("work_mem", "1GB"),
            ("work_mem", " 4MB "),
            ("WORK_MEM", "1.5MB"),
            ("max_wal_size", "1GB"),
            ("statement_timeout", "30s"),
            ("statement_timeout", "1min"),
            ("statement_timeout", "0"),
            ("log_min_duration_statement", "-1"),
            ("random_page_cost", "1.1"),
            ("random_page_cost", "4"),
            ("vacuum_cost_delay", "2ms"),
            ("vacuum_cost_delay", "0.5"),
            ("synchronous_commit", "remote_apply"),
            ("synchronous_commit", "OFF"),
            ("synchronous_commit", "true"),
            ("log_checkpoints", "on"),
            ("log_checkpoints", "Yes"),
            ("log_checkpoints", "0"),
            ("application_name", "anything at all"),
            ("work_mem", ""),
        ] {
            assert_eq!(check(&c, name, value), Ok(Effect::Reload), "{name}={value}");
        }
        assert_eq!(check(&c, "shared_buffers", "256MB"), Ok(Effect::Restart));
        assert_eq!(check(&c, "max_connections", "0x20"), Ok(Effect::Restart));
        assert_eq!(check(&c, "wal_level", "hot_standby"), Ok(Effect::Restart));
        assert_eq!(
            check(&c, "pg_stat_statements.track", "all"),
            Ok(Effect::Placeholder)
        );
        assert_eq!(check(&c, "TimeZone", "UTC"), Ok(Effect::Reload));
        assert_eq!(check(&c, "log_min_messages", "debug"), Ok(Effect::Reload));
    }

    #[test]
    fn bad_values_are_refused_saying_why() {
        let c = catalog();
        let refused = |name: &str, value: &str| check(&c, name, value).expect_err(value);
        assert_eq!(
            refused("wrok_mem", "64MB"),
            "unknown PostgreSQL parameter \"wrok_mem\"; did you mean \"work_mem\"?"
        );
        assert!(refused("zzzz", "1").contains("pg_settings"));
        assert_eq!(
            refused("work_mem", "banana"),
            "invalid value \"banana\" for work_mem: expected a number"
        );
        assert_eq!(
            refused("work_mem", "10"),
            "invalid value \"10\" for work_mem: outside the valid range 64 .. 2147483647 (in units of kB)"
        );
        assert!(refused("work_mem", "64mb").contains("B, kB, MB, GB or TB"));
        assert!(refused("work_mem", "5s").contains("B, kB, MB, GB or TB"));
        assert!(refused("statement_timeout", "5MB").contains("us, ms, s, min, h or d"));
        assert!(refused("max_connections", "100MB").contains("without a unit"));
        assert!(refused("max_connections", "0").contains("outside the valid range 1 .. 262143"));
        assert!(refused("shared_buffers", "64kB").contains("outside"));
        assert!(refused("log_checkpoints", "maybe").contains("boolean"));
        assert!(refused("log_checkpoints", "o").contains("boolean"));
        assert_eq!(
            refused("synchronous_commit", "remote"),
            "invalid value \"remote\" for synchronous_commit: expected one of: local, remote_write, remote_apply, on, off"
        );
        assert!(refused("wal_level", "true").contains("expected one of"));
        assert!(refused("vacuum_cost_delay", "101ms").contains("outside"));
        assert!(refused("block_size", "4096").contains("read-only"));
        // The extension is loaded: a name it does not know is a typo.
        assert_eq!(
            refused("auto_explain.log_min_duratio", "1s"),
            "unknown PostgreSQL parameter \"auto_explain.log_min_duratio\"; did you mean \"auto_explain.log_min_duration\"?"
        );
    }

    #[test]
    fn a_review_uses_the_primary_catalog_and_names_local_overrides() {
        use std::sync::Arc;
        let changes = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut reported = BTreeMap::new();
        assert_eq!(
            review(&changes(&[("work_mem", "banana")]), &reported, Some("n1")).notes,
            vec![
                "no PostgreSQL server has reported its parameters yet: the values were not checked"
            ]
        );
        let mut n2 = ServerSettings {
            server_version: 150000,
            catalog: catalog(),
            local: BTreeMap::new(),
        };
        n2.local.insert("work_mem".into(), "8MB".into());
        reported.insert("n2".to_string(), Arc::new(n2));
        let r = review(
            &changes(&[
                ("work_mem", "64MB"),
                ("shared_buffers", "1GB"),
                ("max_connections", "50"),
            ]),
            &reported,
            Some("n1"),
        );
        assert_eq!(r.errors, Vec::<String>::new());
        assert_eq!(
            r.notes,
            vec![
                "n2 sets work_mem = 8MB in its own agent.toml, which wins over the cluster-wide value there",
                "max_connections, shared_buffers only take effect after a restart: `pgquorum node restart --role any --pending`",
            ]
        );
        let r = review(
            &changes(&[("wrok_mem", "64MB"), ("work_mem", "banana")]),
            &reported,
            None,
        );
        assert_eq!(r.errors.len(), 2, "{r:?}");
        // Removing a setting needs no check, even of its name (it may be
        // the misspelt one); a restart-only one still needs the restart.
        let r = review(
            &changes(&[("stats_temp_directory", ""), ("wrok_mem", "")]),
            &reported,
            None,
        );
        assert_eq!(r, Review::default());
        let r = review(&changes(&[("shared_buffers", "")]), &reported, None);
        assert_eq!(r.errors, Vec::<String>::new());
        assert_eq!(r.notes.len(), 1, "{r:?}");
    }

    #[test]
    fn numbers_read_like_postgresql_reads_them() {
        assert_eq!(parse_number("128MB", Some("8kB"), true), Ok(16384.0));
        assert_eq!(parse_number("1GB", Some("MB"), true), Ok(1024.0));
        assert_eq!(parse_number("1.5s", Some("ms"), true), Ok(1500.0));
        assert_eq!(parse_number("0x10", None, true), Ok(16.0));
        assert_eq!(parse_number("010", None, true), Ok(8.0));
        assert_eq!(parse_number("1e3", None, false), Ok(1000.0));
        assert_eq!(parse_number("-1", Some("ms"), true), Ok(-1.0));
        assert_eq!(parse_number("100 kB", Some("kB"), true), Ok(100.0));
        assert!(parse_number("1.2.3", None, false).is_err());
        assert_eq!(parse_bool("of"), Some(false));
        assert_eq!(parse_bool("tr"), Some(true));
        assert_eq!(parse_bool("o"), None);
    }
}
