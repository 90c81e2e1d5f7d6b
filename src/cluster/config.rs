//! Dynamic configuration of a cluster: committed through Raft, the same for
//! every node, changed with `pgquorum config set KEY=VALUE`.
//!
//! Every key is validated here, in one place, so that the API, the CLI and
//! the state machine refuse the same bad values with the same message.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::slots::{check_permanent_name, DeclaredSlots, PermanentSlot};

/// How commits wait for standbys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Asynchronous replication.
    #[default]
    Off,
    /// `FIRST k (…)`: commits wait for the first `sync_count` standbys listed.
    On,
    /// `ANY k (…)`: commits wait for any `sync_count` standbys of the set.
    Quorum,
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncMode::Off => "off",
            SyncMode::On => "on",
            SyncMode::Quorum => "quorum",
        })
    }
}

/// The prefix of keys that set PostgreSQL parameters on every node.
pub const PARAMETER_PREFIX: &str = "postgresql.parameters.";

/// The prefix of keys that declare permanent replication slots:
/// `slots.NAME.type` (`physical` or `logical`), `slots.NAME.database` and
/// `slots.NAME.plugin` (logical only); `slots.NAME=` removes one.
pub const SLOT_PREFIX: &str = "slots.";

/// Parameters pgquorum sets itself; letting an operator override them would
/// break replication or the safety argument.
const MANAGED_PARAMETERS: &[&str] = &[
    "synchronous_standby_names",
    "primary_conninfo",
    "primary_slot_name",
    "hot_standby",
    "port",
    "listen_addresses",
    "data_directory",
    "hba_file",
    "ident_file",
    "config_file",
    "recovery_target_timeline",
];

/// The committed dynamic configuration of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DynamicConfig {
    /// Primary lease length in milliseconds.
    pub ttl_ms: u64,
    /// How often agents report, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Extra wait beyond a lease's end for clock drift and the time a fence
    /// takes, in milliseconds.
    pub lease_margin_ms: u64,
    pub sync_mode: SyncMode,
    /// How many synchronous standbys a commit waits for.
    pub sync_count: u32,
    /// In sync mode, refuse writes rather than fall back to asynchronous
    /// replication when no standby is available.
    pub sync_strict: bool,
    /// Where commits would wait for no standby (asynchronous mode, or a
    /// sync set that is empty and not strict), they wait for the primary's
    /// own keeper, which acknowledges them only while the lease is valid:
    /// a primary frozen past its lease acknowledges nothing after the thaw.
    pub lease_gated_commits: bool,
    /// Replicas stream through a physical replication slot on their
    /// upstream, and every node holds one for each other member (see
    /// `cluster::slots`).
    pub use_slots: bool,
    /// Asynchronous mode: a replica more than this many bytes behind the last
    /// known primary LSN is never promoted automatically.
    pub maximum_lag_on_failover: u64,
    /// How long a crashed primary whose agent still answers may take to come
    /// back before a replica is promoted instead, in milliseconds.
    pub primary_start_timeout_ms: u64,
    /// A primary whose PostgreSQL runs but has not answered its agent for
    /// this long (frozen, a hung disk) has its lease no longer renewed, in
    /// milliseconds: it is fenced when the lease runs out and a replica
    /// is promoted.
    pub primary_unresponsive_timeout_ms: u64,
    /// Re-clone a node whose pg_rewind failed instead of leaving it down.
    pub reclone_on_rewind_failure: bool,
    /// While no manager quorum can be reached, the primary keeps its lease
    /// as long as every other node's agent promises, directly, to follow it
    /// and to refuse a promotion meanwhile.
    pub failsafe: bool,
    /// PostgreSQL parameters applied on every node.
    pub parameters: BTreeMap<String, String>,
    /// Permanent replication slots (`slots.NAME.*`), and the names of
    /// those since removed, which the nodes drop.
    pub slots: DeclaredSlots,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            ttl_ms: 2000,
            heartbeat_interval_ms: 250,
            lease_margin_ms: 200,
            sync_mode: SyncMode::Off,
            sync_count: 1,
            sync_strict: false,
            lease_gated_commits: true,
            use_slots: true,
            maximum_lag_on_failover: 1024 * 1024,
            primary_start_timeout_ms: 10_000,
            primary_unresponsive_timeout_ms: 1_500,
            reclone_on_rewind_failure: true,
            failsafe: true,
            parameters: BTreeMap::new(),
            slots: DeclaredSlots::default(),
        }
    }
}

/// A configuration change was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "unknown configuration key {key:?}; known keys: {known}, postgresql.parameters.NAME and slots.NAME.type/database/plugin"
    )]
    UnknownKey { key: String, known: String },
    #[error("invalid value {value:?} for {key}: {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: String,
    },
    #[error(
        "{key} cannot be set: pgquorum sets that parameter itself (it manages {managed}); \
         nothing was changed"
    )]
    Managed { key: String, managed: String },
    #[error("{0}")]
    Inconsistent(String),
}

/// A scalar key: its name, how to read it and how to write it.
struct Key {
    name: &'static str,
    get: fn(&DynamicConfig) -> String,
    set: fn(&mut DynamicConfig, &str) -> Result<(), String>,
}

fn duration_ms(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let ms = match value.trim().parse::<u64>() {
        Ok(ms) => ms,
        Err(_) => humantime::parse_duration(value.trim())
            .map_err(|_| {
                format!("a duration such as 2s or 500ms (bare numbers are milliseconds), from {min}ms to {max}ms")
            })?
            .as_millis() as u64,
    };
    if !(min..=max).contains(&ms) {
        return Err(format!("a duration from {min}ms to {max}ms"));
    }
    Ok(ms)
}

fn integer(value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("a whole number from {min} to {max}")),
    }
}

fn boolean(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err("on or off".to_string()),
    }
}

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

fn fmt_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

const KEYS: &[Key] = &[
    Key {
        name: "ttl",
        get: |c| fmt_ms(c.ttl_ms),
        set: |c, v| {
            c.ttl_ms = duration_ms(v, 1000, 60_000)?;
            Ok(())
        },
    },
    Key {
        name: "heartbeat_interval",
        get: |c| fmt_ms(c.heartbeat_interval_ms),
        set: |c, v| {
            c.heartbeat_interval_ms = duration_ms(v, 50, 5000)?;
            Ok(())
        },
    },
    Key {
        name: "lease_margin",
        get: |c| fmt_ms(c.lease_margin_ms),
        set: |c, v| {
            c.lease_margin_ms = duration_ms(v, 100, 10_000)?;
            Ok(())
        },
    },
    Key {
        name: "sync_mode",
        get: |c| c.sync_mode.to_string(),
        set: |c, v| {
            c.sync_mode = match v.trim().to_ascii_lowercase().as_str() {
                "off" | "false" | "async" => SyncMode::Off,
                "on" | "true" | "first" => SyncMode::On,
                "quorum" | "any" => SyncMode::Quorum,
                _ => return Err("off, on or quorum".to_string()),
            };
            Ok(())
        },
    },
    Key {
        name: "sync_count",
        get: |c| c.sync_count.to_string(),
        set: |c, v| {
            c.sync_count = integer(v, 1, 16)? as u32;
            Ok(())
        },
    },
    Key {
        name: "sync_strict",
        get: |c| on_off(c.sync_strict),
        set: |c, v| {
            c.sync_strict = boolean(v)?;
            Ok(())
        },
    },
    Key {
        name: "lease_gated_commits",
        get: |c| on_off(c.lease_gated_commits),
        set: |c, v| {
            c.lease_gated_commits = boolean(v)?;
            Ok(())
        },
    },
    Key {
        name: "use_slots",
        get: |c| on_off(c.use_slots),
        set: |c, v| {
            c.use_slots = boolean(v)?;
            Ok(())
        },
    },
    Key {
        name: "maximum_lag_on_failover",
        get: |c| c.maximum_lag_on_failover.to_string(),
        set: |c, v| {
            c.maximum_lag_on_failover = integer(v, 0, u64::MAX / 2)?;
            Ok(())
        },
    },
    Key {
        name: "primary_start_timeout",
        get: |c| fmt_ms(c.primary_start_timeout_ms),
        set: |c, v| {
            c.primary_start_timeout_ms = duration_ms(v, 0, 3_600_000)?;
            Ok(())
        },
    },
    Key {
        name: "primary_unresponsive_timeout",
        get: |c| fmt_ms(c.primary_unresponsive_timeout_ms),
        set: |c, v| {
            c.primary_unresponsive_timeout_ms = duration_ms(v, 500, 3_600_000)?;
            Ok(())
        },
    },
    Key {
        name: "reclone_on_rewind_failure",
        get: |c| on_off(c.reclone_on_rewind_failure),
        set: |c, v| {
            c.reclone_on_rewind_failure = boolean(v)?;
            Ok(())
        },
    },
    Key {
        name: "failsafe",
        get: |c| on_off(c.failsafe),
        set: |c, v| {
            c.failsafe = boolean(v)?;
            Ok(())
        },
    },
];

fn known_keys() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

impl DynamicConfig {
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn lease_margin(&self) -> Duration {
        Duration::from_millis(self.lease_margin_ms)
    }

    /// Every key with its current value, as `config show` prints it.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map: BTreeMap<String, String> = KEYS
            .iter()
            .map(|k| (k.name.to_string(), (k.get)(self)))
            .collect();
        for (name, value) in &self.parameters {
            map.insert(format!("{PARAMETER_PREFIX}{name}"), value.clone());
        }
        for (name, slot) in &self.slots.slots {
            for (field, value) in slot_fields(slot) {
                map.insert(format!("{SLOT_PREFIX}{name}.{field}"), value);
            }
        }
        map
    }

    /// Apply `changes` (key → value; an empty value resets to the default)
    /// to a copy of `self` and return it, or refuse the whole set.
    pub fn with_changes(&self, changes: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let defaults = DynamicConfig::default();
        let mut next = self.clone();
        let mut slots: BTreeMap<String, BTreeMap<String, String>> = self
            .slots
            .slots
            .iter()
            .map(|(name, slot)| (name.clone(), slot_fields(slot)))
            .collect();
        let mut slots_changed = false;
        for (key, value) in changes {
            if let Some(rest) = key.strip_prefix(SLOT_PREFIX) {
                edit_slot(&mut slots, key, rest, value)?;
                slots_changed = true;
                continue;
            }
            if let Some(name) = key.strip_prefix(PARAMETER_PREFIX) {
                validate_parameter_name(key, name)?;
                if value.is_empty() {
                    next.parameters.remove(name);
                } else {
                    next.parameters.insert(name.to_string(), value.clone());
                }
                continue;
            }
            let spec =
                KEYS.iter()
                    .find(|k| k.name == key)
                    .ok_or_else(|| ConfigError::UnknownKey {
                        key: key.clone(),
                        known: known_keys(),
                    })?;
            let value = if value.is_empty() {
                (spec.get)(&defaults)
            } else {
                value.clone()
            };
            (spec.set)(&mut next, &value).map_err(|expected| ConfigError::BadValue {
                key: key.clone(),
                value: value.clone(),
                expected,
            })?;
        }
        if slots_changed {
            next.slots = self.declare_slots(slots)?;
            // A node still holding the removed slot (its consumer
            // connected, the node down) would not start with a lower
            // wal_level: one step at a time.
            let dropped_logical = self.slots.slots.iter().any(|(name, s)| {
                matches!(s, PermanentSlot::Logical { .. }) && !next.slots.slots.contains_key(name)
            });
            let lowered = self.parameters.get("wal_level") != next.parameters.get("wal_level");
            if dropped_logical && lowered {
                return Err(ConfigError::Inconsistent(
                    "remove the logical slot first and lower wal_level once every node has \
                     dropped it (SELECT slot_name FROM pg_replication_slots on each): \
                     PostgreSQL holding a logical slot does not start with a lower wal_level; \
                     nothing was changed"
                        .to_string(),
                ));
            }
        }
        next.validate()?;
        Ok(next)
    }

    /// The edited slot fields as declarations: complete, consistent, and
    /// not a change of an existing slot's kind, database or plugin (that
    /// would be another slot; its consumer's position would not carry
    /// over).
    fn declare_slots(
        &self,
        edited: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<DeclaredSlots, ConfigError> {
        let mut next = DeclaredSlots {
            slots: BTreeMap::new(),
            retired: self.slots.retired.clone(),
        };
        for (name, fields) in edited {
            if fields.values().all(|v| v.is_empty()) {
                continue;
            }
            let key = format!("{SLOT_PREFIX}{name}");
            let bad = |expected: String| ConfigError::BadValue {
                key: key.clone(),
                value: fields
                    .iter()
                    .map(|(f, v)| format!("{f}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                expected,
            };
            check_permanent_name(&name).map_err(&bad)?;
            let field = |f: &str| fields.get(f).filter(|v| !v.is_empty()).cloned();
            let slot = match field("type").as_deref() {
                Some("physical") if field("database").is_none() && field("plugin").is_none() => {
                    PermanentSlot::Physical
                }
                Some("physical") => {
                    return Err(bad("no database or plugin for a physical slot".to_string()))
                }
                Some("logical") => match (field("database"), field("plugin")) {
                    (Some(database), Some(plugin)) => PermanentSlot::Logical { database, plugin },
                    _ => {
                        return Err(bad(format!(
                            "a logical slot needs {key}.database and {key}.plugin \
                             (an output plugin such as pgoutput or test_decoding)"
                        )))
                    }
                },
                _ => return Err(bad(format!("{key}.type set to physical or logical"))),
            };
            if let Some(old) = self.slots.slots.get(&name) {
                if *old != slot {
                    return Err(bad(format!(
                        "the declaration it has ({}): a slot's kind, database and plugin \
                         cannot change; remove it ({key}=) and declare it again, which \
                         drops it with its consumer's position",
                        slot_fields(old)
                            .iter()
                            .map(|(f, v)| format!("{f}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )));
                }
            }
            next.retired.remove(&name);
            next.slots.insert(name, slot);
        }
        for name in self.slots.slots.keys() {
            if !next.slots.contains_key(name) {
                next.retired.insert(name.clone());
            }
        }
        Ok(next)
    }

    /// Checks that concern several keys at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let logical = self
            .slots
            .slots
            .iter()
            .find(|(_, s)| matches!(s, PermanentSlot::Logical { .. }));
        let wal_level = self
            .parameters
            .get("wal_level")
            .map(|v| v.to_ascii_lowercase());
        if let (Some((name, _)), false) = (logical, wal_level.as_deref() == Some("logical")) {
            return Err(ConfigError::Inconsistent(format!(
                "logical slot {name} needs postgresql.parameters.wal_level=logical \
                 (a PostgreSQL holding a logical slot with a lower wal_level does not start); \
                 set it (with the slot, or first), then restart the nodes: \
                 pgquorum node restart --role any --pending"
            )));
        }
        if self.heartbeat_interval_ms * 3 > self.ttl_ms {
            return Err(ConfigError::Inconsistent(format!(
                "heartbeat_interval ({}) must be at most a third of ttl ({}) so that a \
                 healthy primary renews its lease before it ends",
                fmt_ms(self.heartbeat_interval_ms),
                fmt_ms(self.ttl_ms)
            )));
        }
        Ok(())
    }
}

/// A declaration as `slots.NAME.FIELD` values.
fn slot_fields(slot: &PermanentSlot) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    match slot {
        PermanentSlot::Physical => {
            fields.insert("type".to_string(), "physical".to_string());
        }
        PermanentSlot::Logical { database, plugin } => {
            fields.insert("type".to_string(), "logical".to_string());
            fields.insert("database".to_string(), database.clone());
            fields.insert("plugin".to_string(), plugin.clone());
        }
    }
    fields
}

/// Apply one `slots.…` change to the slot fields being edited: `slots.NAME`
/// with an empty value removes the slot (`slots.NAME=physical` or
/// `=logical` sets its type); `slots.NAME.FIELD` sets or (empty) clears one
/// field.
fn edit_slot(
    slots: &mut BTreeMap<String, BTreeMap<String, String>>,
    key: &str,
    rest: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let (name, field) = match rest.split_once('.') {
        Some((name, field)) => (name, field),
        None if value.is_empty() => {
            slots.remove(rest);
            return Ok(());
        }
        None => (rest, "type"),
    };
    let value = value.trim();
    let valid = match field {
        "type" => matches!(value, "physical" | "logical" | ""),
        "database" | "plugin" => true,
        _ => {
            return Err(ConfigError::BadValue {
                key: key.to_string(),
                value: value.to_string(),
                expected: format!(
                    "one of {SLOT_PREFIX}{name}.type, .database, .plugin (or {SLOT_PREFIX}{name}= to remove it)"
                ),
            })
        }
    };
    if !valid {
        return Err(ConfigError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: "physical or logical".to_string(),
        });
    }
    slots
        .entry(name.to_string())
        .or_default()
        .insert(field.to_string(), value.to_string());
    Ok(())
}

fn validate_parameter_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let well_formed = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !well_formed {
        return Err(ConfigError::BadValue {
            key: key.to_string(),
            value: name.to_string(),
            expected: "a PostgreSQL parameter name (letters, digits, _ and .)".to_string(),
        });
    }
    if MANAGED_PARAMETERS.contains(&name) {
        return Err(ConfigError::Managed {
            key: key.to_string(),
            managed: MANAGED_PARAMETERS.join(", "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accepts_units_and_bare_milliseconds() {
        let c = DynamicConfig::default()
            .with_changes(&changes(&[("ttl", "3s"), ("heartbeat_interval", "400")]))
            .unwrap();
        assert_eq!(c.ttl_ms, 3000);
        assert_eq!(c.heartbeat_interval_ms, 400);
        assert_eq!(c.to_map()["ttl"], "3s");
    }

    #[test]
    fn refuses_out_of_range_with_the_range() {
        let err = DynamicConfig::default()
            .with_changes(&changes(&[("ttl", "100ms")]))
            .unwrap_err();
        assert!(err.to_string().contains("1000ms to 60000ms"), "{err}");
    }

    #[test]
    fn refuses_unknown_keys_and_managed_parameters() {
        let err = DynamicConfig::default()
            .with_changes(&changes(&[("tll", "2s")]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { .. }));
        let err = DynamicConfig::default()
            .with_changes(&changes(&[(
                "postgresql.parameters.synchronous_standby_names",
                "*",
            )]))
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "postgresql.parameters.synchronous_standby_names cannot be set: pgquorum sets that parameter itself"
            ),
            "{err}"
        );
        // A backup tool's restore_command is the operator's to set.
        let c = DynamicConfig::default()
            .with_changes(&changes(&[(
                "postgresql.parameters.restore_command",
                "pgbackrest --stanza=main archive-get %f \"%p\"",
            )]))
            .unwrap();
        assert!(c.parameters.contains_key("restore_command"));
    }

    #[test]
    fn all_or_nothing() {
        let base = DynamicConfig::default();
        let err = base.with_changes(&changes(&[("sync_mode", "on"), ("sync_count", "99")]));
        assert!(err.is_err());
        assert_eq!(base.sync_mode, SyncMode::Off);
    }

    #[test]
    fn heartbeat_must_fit_in_ttl() {
        let err = DynamicConfig::default()
            .with_changes(&changes(&[("heartbeat_interval", "1s")]))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Inconsistent(_)));
    }

    #[test]
    fn empty_value_resets_to_default() {
        let c = DynamicConfig::default()
            .with_changes(&changes(&[
                ("sync_count", "3"),
                ("postgresql.parameters.work_mem", "8MB"),
            ]))
            .unwrap();
        let c = c
            .with_changes(&changes(&[
                ("sync_count", ""),
                ("postgresql.parameters.work_mem", ""),
            ]))
            .unwrap();
        assert_eq!(c, DynamicConfig::default());
    }

    #[test]
    fn permanent_slots_are_declared_checked_and_retired() {
        let logical = changes(&[
            ("postgresql.parameters.wal_level", "logical"),
            ("slots.cdc.type", "logical"),
            ("slots.cdc.database", "app"),
            ("slots.cdc.plugin", "pgoutput"),
            ("slots.archive", "physical"),
        ]);
        let c = DynamicConfig::default().with_changes(&logical).unwrap();
        assert_eq!(
            c.slots.slots["cdc"],
            PermanentSlot::Logical {
                database: "app".into(),
                plugin: "pgoutput".into()
            }
        );
        assert_eq!(c.slots.slots["archive"], PermanentSlot::Physical);
        let map = c.to_map();
        assert_eq!(map["slots.cdc.plugin"], "pgoutput");
        assert_eq!(map["slots.archive.type"], "physical");

        // Removed: retired, so that the nodes drop it; declared again:
        // no longer retired.
        let removed = c.with_changes(&changes(&[("slots.cdc", "")])).unwrap();
        assert!(!removed.slots.slots.contains_key("cdc"));
        assert!(removed.slots.retired.contains("cdc"));
        let again = removed
            .with_changes(&changes(&[
                ("slots.cdc.type", "logical"),
                ("slots.cdc.database", "other"),
                ("slots.cdc.plugin", "pgoutput"),
            ]))
            .unwrap();
        assert!(!again.slots.retired.contains("cdc"));

        let refused = |base: &DynamicConfig, pairs: &[(&str, &str)]| {
            base.with_changes(&changes(pairs)).unwrap_err().to_string()
        };
        let d = DynamicConfig::default();
        assert!(refused(&d, &[("slots.cdc.type", "logical")]).contains("needs slots.cdc.database"));
        assert!(refused(
            &d,
            &[
                ("slots.cdc.type", "logical"),
                ("slots.cdc.database", "app"),
                ("slots.cdc.plugin", "pgoutput")
            ]
        )
        .contains("needs postgresql.parameters.wal_level=logical"));
        assert!(refused(&d, &[("slots.x.type", "fancy")]).contains("physical or logical"));
        assert!(refused(&d, &[("slots.x.size", "1")]).contains("slots.x.type, .database"));
        assert!(refused(&d, &[("slots.pgq_n1", "physical")]).contains("pgquorum's own"));
        assert!(refused(&d, &[("slots.Bad", "physical")]).contains("lower-case"));
        assert!(
            refused(&d, &[("slots.a.type", "physical"), ("slots.a.plugin", "x")])
                .contains("no database or plugin")
        );
        // Another plugin would be another slot.
        assert!(refused(&c, &[("slots.cdc.plugin", "wal2json")]).contains("cannot change"));
        // Nor may wal_level go while a logical slot needs it, nor in the
        // change that removes it.
        assert!(refused(
            &c,
            &[("slots.cdc", ""), ("postgresql.parameters.wal_level", "")]
        )
        .contains("remove the logical slot first"));
        assert!(
            refused(&c, &[("postgresql.parameters.wal_level", "replica")])
                .contains("needs postgresql.parameters.wal_level=logical")
        );
    }
}
