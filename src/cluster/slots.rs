//! Replication slots, on every node: one physical slot per member, and the
//! operator's permanent slots.
//!
//! A replica streams through a slot on its upstream, so the primary keeps
//! the WAL a replica that was down for a while still needs (bounded by
//! `max_slot_wal_keep_size`, which pgquorum sets to a default an operator
//! can override). Every node — replicas too — holds a slot for each other
//! member: a replica promoted to primary already has the slots its new
//! replicas connect to, so none of them waits for one after a failover.
//! On a replica the slots are not used; they are moved forward to what the
//! replica has replayed, so that they hold back no WAL there.
//!
//! Permanent slots are declared in the dynamic configuration (`slots.NAME.*`)
//! for consumers outside the cluster: a physical one for a `pg_receivewal`
//! or a standby elsewhere, a logical one for change data capture. The
//! primary holds them; every replica holds a copy that follows the
//! primary's position (never ahead of it), so that after a failover the
//! consumer finds its slot on the new primary and resumes from its own
//! position without a gap. PostgreSQL 15 cannot create a logical slot on a
//! standby: a replica copies the slot's state file from its upstream and
//! needs one restart to load it ([`restart_to_load`]), then moves it forward
//! with `pg_replication_slot_advance` (which works in recovery).
//!
//! Pure: what a node has and what the cluster looks like come in, the
//! actions to take come out. Only slots named by [`slot_name`] and slots the
//! configuration declares (or once declared) are ever touched; an
//! operator's own slots are left alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::lsn::Lsn;

/// Prefix of the slots pgquorum manages.
pub const PREFIX: &str = "pgq_";

/// The longest slot name PostgreSQL accepts (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// The slot of `node`: `pgq_` and the name. A name a slot cannot hold as
/// it is (upper case, `-`, too long) is lower-cased, its other characters
/// made `_`, and a short hash of the real name appended, so that `db-1`
/// and `db_1` never share a slot.
pub fn slot_name(node: &str) -> String {
    let plain: String = node
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if plain == node && PREFIX.len() + node.len() <= MAX_NAME {
        return format!("{PREFIX}{node}");
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(node.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let room = MAX_NAME - PREFIX.len() - 1 - hash.len();
    format!("{PREFIX}{}_{hash}", &plain[..plain.len().min(room)])
}

/// A slot the operator declares in the dynamic configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PermanentSlot {
    Physical,
    /// Decoded in `database` by output plugin `plugin`.
    Logical {
        database: String,
        plugin: String,
    },
}

/// The permanent slots of a cluster, as the leader sends them to agents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeclaredSlots {
    pub slots: BTreeMap<String, PermanentSlot>,
    /// Slots once declared and since removed from the configuration: the
    /// nodes drop them (an operator's undeclared slots are never dropped).
    pub retired: BTreeSet<String>,
}

/// A slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    /// A WAL sender streams through it now.
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    /// `wal_status = 'lost'`: the WAL it held was removed past
    /// `max_slot_wal_keep_size`; the slot is of no use any more.
    pub lost: bool,
    /// `None` for a physical slot.
    pub logical: Option<LogicalState>,
}

/// What a logical slot adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalState {
    pub database: String,
    pub plugin: String,
    /// Up to where its consumer has confirmed receipt.
    pub confirmed_flush: Option<Lsn>,
}

/// One change to a node's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    /// A physical slot, reserving WAL from now.
    Create(String),
    Drop(String),
    /// Move a replica's unused physical slot forward to this LSN.
    Advance(String, Lsn),
    /// Create a logical slot (on a primary).
    CreateLogical {
        name: String,
        database: String,
        plugin: String,
    },
    /// Move a logical slot's confirmed position forward (on a replica: to
    /// where the primary's copy is).
    AdvanceLogical {
        name: String,
        database: String,
        lsn: Lsn,
    },
    /// Copy a logical slot's state from the upstream into this replica's
    /// data directory; it is loaded at the next restart.
    Copy(String),
    /// Remove a copied state file the server never loaded (this node was
    /// promoted before its restart): the primary creates the slot instead.
    DiscardCopy(String),
}

/// What this node sees of itself and its cluster.
#[derive(Debug, Clone)]
pub struct SlotInput<'a> {
    pub node: &'a str,
    /// Every member of the cluster (this node included or not).
    pub members: &'a [String],
    pub use_slots: bool,
    pub in_recovery: bool,
    /// A replica's replay LSN.
    pub replay_lsn: Lsn,
    /// The permanent slots; `None` until the leader has said (slots are
    /// then neither created nor dropped).
    pub declared: Option<&'a DeclaredSlots>,
    /// A replica's view of its upstream's slots; `None` when it could not
    /// be read (copies then stay as they are).
    pub upstream: Option<&'a [Slot]>,
    /// Slot directories in the data directory that the running server has
    /// not loaded (copies waiting for a restart).
    pub unloaded: &'a [String],
    /// A replica's last restartpoint: WAL from there on is still in its
    /// `pg_wal`, so a copied slot must not need older WAL.
    pub redo_lsn: Lsn,
    /// The running server has `wal_level = logical` (a logical slot on a
    /// server without it keeps PostgreSQL from starting).
    pub logical_wal: bool,
}

/// The actions that bring `existing` to what the node should hold: a slot
/// for every other member (none when slots are off), ours for a removed
/// member dropped once nothing streams through it, a lost one dropped (it
/// is created afresh next time), a replica's slots kept at its replay LSN;
/// and the permanent slots (see [`permanent`]).
pub fn plan(input: &SlotInput<'_>, existing: &[Slot]) -> Vec<SlotAction> {
    let wanted: Vec<String> = if input.use_slots {
        input
            .members
            .iter()
            .filter(|m| m.as_str() != input.node)
            .map(|m| slot_name(m))
            .collect()
    } else {
        Vec::new()
    };
    let mut actions = Vec::new();
    for slot in existing
        .iter()
        .filter(|s| s.name.starts_with(PREFIX) && s.logical.is_none())
    {
        let keep = wanted.contains(&slot.name);
        if slot.active {
            continue;
        }
        if !keep || slot.lost {
            actions.push(SlotAction::Drop(slot.name.clone()));
        } else if input.in_recovery && slot.restart_lsn.is_some_and(|l| l < input.replay_lsn) {
            actions.push(SlotAction::Advance(slot.name.clone(), input.replay_lsn));
        }
    }
    for name in wanted {
        if !existing.iter().any(|s| s.name == name) {
            actions.push(SlotAction::Create(name));
        }
    }
    actions.extend(permanent(input, existing));
    actions
}

/// The permanent slots. A primary creates the declared ones it lacks. A
/// replica keeps a copy of each that is never ahead of the upstream's:
/// a physical one is created and moved to the upstream's `restart_lsn`; a
/// logical one is copied once the upstream's is safe to copy (its WAL is
/// still here, this replica has replayed past its confirmed position) and
/// then advanced to the upstream's confirmed position; a copy ahead of the
/// upstream's (this node was the primary and its consumer confirmed more
/// than the new primary has) is dropped and copied again, for a consumer
/// would otherwise miss changes after a failover back to it. Retired slots
/// are dropped everywhere once unused.
pub fn permanent(input: &SlotInput<'_>, existing: &[Slot]) -> Vec<SlotAction> {
    let Some(declared) = input.declared else {
        return Vec::new();
    };
    let mut actions = Vec::new();
    let find = |slots: &[Slot], name: &str| slots.iter().find(|s| s.name == name).cloned();
    for name in &declared.retired {
        if declared.slots.contains_key(name) {
            continue;
        }
        if find(existing, name).is_some_and(|s| !s.active) {
            actions.push(SlotAction::Drop(name.clone()));
        } else if input.unloaded.contains(name) {
            actions.push(SlotAction::DiscardCopy(name.clone()));
        }
    }
    for (name, spec) in &declared.slots {
        let local = find(existing, name);
        let theirs = input.upstream.and_then(|up| find(up, name));
        match spec {
            PermanentSlot::Physical => match (local, input.in_recovery) {
                (None, _) => actions.push(SlotAction::Create(name.clone())),
                (Some(l), true) if !l.active && l.logical.is_none() => {
                    let target = theirs
                        .and_then(|t| t.restart_lsn)
                        .map(|t| t.min(input.replay_lsn));
                    if let Some(target) = target.filter(|t| l.restart_lsn.is_some_and(|r| r < *t)) {
                        actions.push(SlotAction::Advance(name.clone(), target));
                    }
                }
                _ => {}
            },
            PermanentSlot::Logical { database, plugin } => {
                // Another database or plugin is another slot (declared
                // anew after a removal some node had not carried out).
                let other = local.as_ref().is_some_and(|l| {
                    l.logical
                        .as_ref()
                        .is_some_and(|x| x.database != *database || x.plugin != *plugin)
                });
                if other {
                    if local.as_ref().is_some_and(|l| !l.active) {
                        actions.push(SlotAction::Drop(name.clone()));
                    }
                    continue;
                }
                if !input.in_recovery {
                    if local.is_none() {
                        if input.unloaded.contains(name) {
                            actions.push(SlotAction::DiscardCopy(name.clone()));
                        }
                        if input.logical_wal {
                            actions.push(SlotAction::CreateLogical {
                                name: name.clone(),
                                database: database.clone(),
                                plugin: plugin.clone(),
                            });
                        }
                    }
                    continue;
                }
                if input.unloaded.contains(name) {
                    continue;
                }
                let Some(theirs) = theirs else {
                    continue;
                };
                let Some(up) = theirs.logical.as_ref() else {
                    continue;
                };
                // A slot being created has no confirmed position yet (and
                // PostgreSQL drops it at start if copied now).
                let Some(up_confirmed) = up.confirmed_flush else {
                    continue;
                };
                match local {
                    Some(l) if l.active => {}
                    Some(l) => {
                        let mine = l.logical.as_ref().and_then(|x| x.confirmed_flush);
                        // Ahead of the primary's, or its WAL gone here:
                        // copied again.
                        if l.logical.is_none() || l.lost || mine.is_some_and(|m| m > up_confirmed) {
                            actions.push(SlotAction::Drop(name.clone()));
                        } else if mine.is_some_and(|m| m < up_confirmed)
                            && input.replay_lsn > mine.unwrap_or(Lsn(0))
                        {
                            actions.push(SlotAction::AdvanceLogical {
                                name: name.clone(),
                                database: database.clone(),
                                lsn: up_confirmed.min(input.replay_lsn),
                            });
                        }
                    }
                    None => {
                        let copyable = input.logical_wal
                            && up.database == *database
                            && up.plugin == *plugin
                            && !theirs.lost
                            && theirs.restart_lsn.is_some_and(|r| r >= input.redo_lsn)
                            && input.replay_lsn >= up_confirmed;
                        if copyable {
                            actions.push(SlotAction::Copy(name.clone()));
                        }
                    }
                }
            }
        }
    }
    actions
}

/// A replica holds copied logical slots its server has not loaded yet: it
/// needs a restart (which the leader orders, like any other).
pub fn restart_to_load(input: &SlotInput<'_>) -> bool {
    input.in_recovery
        && input.declared.is_some_and(|d| {
            input
                .unloaded
                .iter()
                .any(|n| matches!(d.slots.get(n), Some(PermanentSlot::Logical { .. })))
        })
}

/// A permanent slot's name is one PostgreSQL accepts and not one of ours.
pub fn check_permanent_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'));
    if !valid {
        return Err(format!(
            "a slot name of lower-case letters, digits and _ (at most {MAX_NAME})"
        ));
    }
    if name.starts_with(PREFIX) {
        return Err(format!(
            "a name not starting with {PREFIX} (pgquorum's own slots for the members)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, active: bool, lsn: u64) -> Slot {
        Slot {
            name: name.to_string(),
            active,
            restart_lsn: Some(Lsn(lsn)),
            lost: false,
            logical: None,
        }
    }

    fn bare<'a>() -> SlotInput<'a> {
        SlotInput {
            node: "",
            members: &[],
            use_slots: true,
            in_recovery: false,
            replay_lsn: Lsn(0),
            declared: None,
            upstream: None,
            unloaded: &[],
            redo_lsn: Lsn(0),
            logical_wal: true,
        }
    }

    fn logical(name: &str, restart: u64, confirmed: u64) -> Slot {
        Slot {
            name: name.to_string(),
            active: false,
            restart_lsn: Some(Lsn(restart)),
            lost: false,
            logical: Some(LogicalState {
                database: "app".into(),
                plugin: "pgoutput".into(),
                confirmed_flush: Some(Lsn(confirmed)),
            }),
        }
    }

    fn declared() -> DeclaredSlots {
        DeclaredSlots {
            slots: [
                (
                    "cdc".to_string(),
                    PermanentSlot::Logical {
                        database: "app".into(),
                        plugin: "pgoutput".into(),
                    },
                ),
                ("archiver".to_string(), PermanentSlot::Physical),
            ]
            .into(),
            retired: ["old".to_string()].into(),
        }
    }

    #[test]
    fn a_primary_creates_declared_slots_and_drops_retired_ones() {
        let d = declared();
        let input = SlotInput {
            declared: Some(&d),
            ..bare()
        };
        let existing = [slot("old", false, 5), slot("mine", false, 5)];
        assert_eq!(
            permanent(&input, &existing),
            vec![
                SlotAction::Drop("old".into()),
                SlotAction::Create("archiver".into()),
                SlotAction::CreateLogical {
                    name: "cdc".into(),
                    database: "app".into(),
                    plugin: "pgoutput".into()
                },
            ]
        );
        // In use: neither dropped nor touched; already there: nothing.
        let existing = [
            slot("old", true, 5),
            slot("archiver", false, 5),
            logical("cdc", 5, 9),
        ];
        assert_eq!(permanent(&input, &existing), vec![]);
        // Without wal_level = logical a logical slot is not attempted; and
        // before the leader said what is declared, nothing at all.
        let input = SlotInput {
            logical_wal: false,
            ..input
        };
        assert_eq!(permanent(&input, &[slot("archiver", false, 5)]), vec![]);
        assert_eq!(permanent(&bare(), &[slot("old", false, 1)]), vec![]);
    }

    #[test]
    fn a_replica_copies_a_logical_slot_once_it_is_safe_and_follows_the_primary() {
        let d = declared();
        let up = [slot("archiver", true, 700), logical("cdc", 400, 600)];
        let replica = SlotInput {
            in_recovery: true,
            replay_lsn: Lsn(800),
            redo_lsn: Lsn(300),
            declared: Some(&d),
            upstream: Some(&up),
            ..bare()
        };
        assert_eq!(
            permanent(&replica, &[]),
            vec![
                SlotAction::Create("archiver".into()),
                SlotAction::Copy("cdc".into())
            ]
        );
        // Not yet: the WAL the slot needs is gone here; this replica has
        // not replayed up to the consumer's position; no logical WAL.
        for unsafe_input in [
            SlotInput {
                redo_lsn: Lsn(401),
                ..replica.clone()
            },
            SlotInput {
                replay_lsn: Lsn(599),
                ..replica.clone()
            },
            SlotInput {
                logical_wal: false,
                ..replica.clone()
            },
        ] {
            assert_eq!(
                permanent(&unsafe_input, &[slot("archiver", false, 700)]),
                vec![],
                "{unsafe_input:?}"
            );
        }
        // Copied, waiting for the restart that loads it.
        let unloaded = ["cdc".to_string()];
        let waiting = SlotInput {
            unloaded: &unloaded,
            ..replica.clone()
        };
        assert_eq!(permanent(&waiting, &[slot("archiver", false, 700)]), vec![]);
        assert!(restart_to_load(&waiting));
        assert!(!restart_to_load(&replica));
        // Loaded: moved to the primary's positions, never past them.
        assert_eq!(
            permanent(
                &replica,
                &[slot("archiver", false, 650), logical("cdc", 400, 550)]
            ),
            vec![
                SlotAction::Advance("archiver".into(), Lsn(700)),
                SlotAction::AdvanceLogical {
                    name: "cdc".into(),
                    database: "app".into(),
                    lsn: Lsn(600)
                }
            ]
        );
        let behind = SlotInput {
            replay_lsn: Lsn(580),
            ..replica.clone()
        };
        assert_eq!(
            permanent(
                &behind,
                &[slot("archiver", false, 700), logical("cdc", 400, 550)]
            ),
            vec![SlotAction::AdvanceLogical {
                name: "cdc".into(),
                database: "app".into(),
                lsn: Lsn(580)
            }]
        );
        // Ahead of the primary's (this node was the primary): dropped, to
        // be copied again.
        assert_eq!(
            permanent(
                &replica,
                &[slot("archiver", false, 700), logical("cdc", 400, 650)]
            ),
            vec![SlotAction::Drop("cdc".into())]
        );
        // Its WAL gone here (lost): copied again.
        let lost = Slot {
            lost: true,
            ..logical("cdc", 400, 550)
        };
        assert_eq!(
            permanent(&replica, &[slot("archiver", false, 700), lost]),
            vec![SlotAction::Drop("cdc".into())]
        );
        // Another plugin (declared anew): dropped, then copied.
        let mut other = logical("cdc", 400, 600);
        if let Some(l) = other.logical.as_mut() {
            l.plugin = "wal2json".into();
        }
        assert_eq!(
            permanent(&replica, &[slot("archiver", false, 700), other]),
            vec![SlotAction::Drop("cdc".into())]
        );
        // Being created on the primary (no confirmed position yet): not
        // copied.
        let mut creating = logical("cdc", 400, 0);
        if let Some(l) = creating.logical.as_mut() {
            l.confirmed_flush = None;
        }
        let up_creating = [slot("archiver", true, 700), creating];
        assert_eq!(
            permanent(
                &SlotInput {
                    upstream: Some(&up_creating),
                    ..replica.clone()
                },
                &[slot("archiver", false, 700)]
            ),
            vec![]
        );
        // The upstream could not be read: copies stay as they are.
        let blind = SlotInput {
            upstream: None,
            ..replica.clone()
        };
        assert_eq!(
            permanent(
                &blind,
                &[slot("archiver", false, 100), logical("cdc", 1, 2)]
            ),
            vec![]
        );
    }

    #[test]
    fn a_promoted_node_with_an_unloaded_copy_creates_the_slot_afresh() {
        let d = declared();
        let unloaded = ["cdc".to_string()];
        let input = SlotInput {
            declared: Some(&d),
            unloaded: &unloaded,
            ..bare()
        };
        assert_eq!(
            permanent(&input, &[slot("archiver", false, 1)]),
            vec![
                SlotAction::DiscardCopy("cdc".into()),
                SlotAction::CreateLogical {
                    name: "cdc".into(),
                    database: "app".into(),
                    plugin: "pgoutput".into()
                }
            ]
        );
        assert!(!restart_to_load(&input));
    }

    #[test]
    fn permanent_names_are_checked() {
        assert_eq!(check_permanent_name("cdc_1"), Ok(()));
        assert!(check_permanent_name("pgq_x")
            .unwrap_err()
            .contains("pgquorum's own"));
        assert!(check_permanent_name("Bad-name")
            .unwrap_err()
            .contains("lower-case"));
        assert!(check_permanent_name(&"x".repeat(64)).is_err());
        assert!(check_permanent_name("").is_err());
    }

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn slot_names_are_valid_and_ours() {
        assert_eq!(slot_name("n1"), "pgq_n1");
        assert_eq!(slot_name("db_1"), "pgq_db_1");
        let dashed = slot_name("db-1");
        assert!(
            dashed.starts_with("pgq_db_1_") && dashed.len() == "pgq_db_1_".len() + 8,
            "{dashed}"
        );
        assert_ne!(dashed, slot_name("DB_1"));
        assert_ne!(slot_name(&"x".repeat(63)), slot_name(&"x".repeat(62)));
        assert_eq!(slot_name(&"x".repeat(70)).len(), 63);
        assert!(slot_name("Ünïcode").is_ascii());
    }

    #[test]
    fn a_primary_gets_a_slot_per_other_member_and_keeps_unused_ones() {
        let m = members(&["n1", "n2", "n3"]);
        let input = SlotInput {
            node: "n1",
            members: &m,
            use_slots: true,
            in_recovery: false,
            replay_lsn: Lsn(0),
            ..bare()
        };
        assert_eq!(
            plan(&input, &[]),
            vec![
                SlotAction::Create("pgq_n2".into()),
                SlotAction::Create("pgq_n3".into())
            ]
        );
        // n3 is down: its slot holds the WAL it needs; nothing to do. An
        // operator's slot and a slot of a removed member that still
        // streams are left alone; a removed member's idle slot goes.
        let existing = [
            slot("pgq_n2", true, 500),
            slot("pgq_n3", false, 100),
            slot("backup_tool", false, 50),
            slot("pgq_gone", true, 400),
            slot("pgq_old", false, 10),
        ];
        assert_eq!(
            plan(&input, &existing),
            vec![SlotAction::Drop("pgq_old".into())]
        );
    }

    #[test]
    fn a_replica_keeps_slots_for_the_others_at_its_replay_lsn() {
        let m = members(&["n1", "n2", "n3"]);
        let input = SlotInput {
            node: "n2",
            members: &m,
            use_slots: true,
            in_recovery: true,
            replay_lsn: Lsn(900),
            ..bare()
        };
        let existing = [slot("pgq_n1", false, 300), slot("pgq_n3", false, 900)];
        assert_eq!(
            plan(&input, &existing),
            vec![SlotAction::Advance("pgq_n1".into(), Lsn(900))]
        );
    }

    #[test]
    fn lost_slots_are_dropped_and_slots_off_drops_ours() {
        let m = members(&["n1", "n2"]);
        let mut input = SlotInput {
            node: "n1",
            members: &m,
            use_slots: true,
            in_recovery: false,
            replay_lsn: Lsn(0),
            ..bare()
        };
        let lost = Slot {
            lost: true,
            ..slot("pgq_n2", false, 10)
        };
        assert_eq!(
            plan(&input, &[lost]),
            vec![SlotAction::Drop("pgq_n2".into())]
        );
        input.use_slots = false;
        let existing = [slot("pgq_n2", false, 10), slot("mine", false, 10)];
        assert_eq!(
            plan(&input, &existing),
            vec![SlotAction::Drop("pgq_n2".into())]
        );
    }
}
