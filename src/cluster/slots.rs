//! Physical replication slots, one per member, on every node.
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
//! Pure: what a node has and what the cluster looks like come in, the
//! actions to take come out. Only slots named by [`slot_name`] are ever
//! touched; an operator's own slots are left alone.

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

/// A physical slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    /// A WAL sender streams through it now.
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    /// `wal_status = 'lost'`: the WAL it held was removed past
    /// `max_slot_wal_keep_size`; the slot is of no use any more.
    pub lost: bool,
}

/// One change to a node's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    Create(String),
    Drop(String),
    /// Move a replica's unused slot forward to what it replayed.
    Advance(String, Lsn),
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
}

/// The actions that bring `existing` to what the node should hold: a slot
/// for every other member (none when slots are off), ours for a removed
/// member dropped once nothing streams through it, a lost one dropped (it
/// is created afresh next time), a replica's slots kept at its replay LSN.
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
    for slot in existing.iter().filter(|s| s.name.starts_with(PREFIX)) {
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
    actions
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
        }
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
