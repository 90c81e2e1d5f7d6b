//! A permanent logical slot survives a switchover and a crash of the
//! primary: a change-data-capture consumer resumes on the new primary from
//! its own position and reads every committed change exactly once.
//!
//! The consumer is what a streaming one (pg_recvlogical, Debezium) does
//! over the replication protocol, in SQL: it reads and confirms with
//! `pg_logical_slot_get_changes`, remembers the confirmed position, and on
//! (re)connecting starts from there — `START_REPLICATION … LOGICAL pos`
//! moves a slot that is behind up to `pos`, which is
//! `pg_replication_slot_advance` here.

mod common;

use std::time::Duration;

use common::sandbox::*;
use common::stderr;

const LONG: Duration = Duration::from_secs(180);

struct Consumer {
    /// Every id it has read, in order.
    seen: Vec<i64>,
    /// The position it confirmed last.
    position: Option<String>,
}

impl Consumer {
    /// Read what is new on `node`'s slot `cdc`.
    fn read(&mut self, sb: &Sandbox, node: &str) -> Result<(), String> {
        let c = sb.conninfo(node);
        if let Some(pos) = &self.position {
            psql(
                &c,
                &format!(
                    "SELECT pg_replication_slot_advance('cdc', '{pos}') FROM pg_replication_slots \
                     WHERE slot_name = 'cdc' AND confirmed_flush_lsn < '{pos}'"
                ),
            )?;
        }
        let changes = psql(
            &c,
            "SELECT data FROM pg_logical_slot_get_changes('cdc', NULL, NULL) \
             WHERE data LIKE 'table public.cdc_rows: INSERT:%'",
        )?;
        for line in changes.lines() {
            let id = line
                .rsplit(':')
                .next()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("unexpected change {line:?}"))?;
            self.seen.push(id);
        }
        self.position = Some(psql(
            &c,
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'cdc'",
        )?);
        Ok(())
    }
}

/// Insert ids `from..=to`, one transaction each, on the primary.
fn insert(sb: &Sandbox, node: &str, from: i64, to: i64) {
    for id in from..=to {
        psql(
            &sb.conninfo(node),
            &format!("INSERT INTO cdc_rows VALUES ({id})"),
        )
        .unwrap_or_else(|e| panic!("insert {id} on {node}: {e}"));
    }
}

/// `name`'s copy of slot `cdc`: loaded, and never ahead of the primary's.
fn copy_state(sb: &Sandbox, node: &str) -> Result<String, String> {
    psql(
        &sb.conninfo(node),
        "SELECT slot_type || ' ' || plugin || ' ' || confirmed_flush_lsn \
         FROM pg_replication_slots WHERE slot_name = 'cdc'",
    )
}

/// Every replica has loaded its copy of `cdc` and holds it at the
/// primary's position (ahead would make a consumer miss changes).
fn wait_copies_at_primary(sb: &Sandbox, primary: &str, replicas: &[String]) {
    for r in replicas {
        poll(&format!("{r}'s copy of cdc at {primary}'s"), LONG, || {
            let theirs = copy_state(sb, primary)?;
            let mine = copy_state(sb, r)?;
            if !mine.is_empty() && mine == theirs {
                Ok(())
            } else {
                Err(format!("{r}: {mine:?}, {primary}: {theirs:?}"))
            }
        });
    }
}

/// Wait until every replica has replayed what `primary` wrote so far.
fn wait_replayed(sb: &Sandbox, primary: &str, replicas: &[String]) {
    let lsn = psql(&sb.conninfo(primary), "SELECT pg_current_wal_lsn()").expect("lsn");
    for r in replicas {
        poll(&format!("{r} replayed {lsn}"), LONG, || {
            let caught_up = psql(
                &sb.conninfo(r),
                &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"),
            )?;
            (caught_up == "t").then_some(()).ok_or(caught_up)
        });
    }
}

#[test]
fn a_logical_slot_survives_switchover_and_crash_without_losing_or_repeating_a_change() {
    let sb = Sandbox::up("logical-slots", 3);
    let p0 = sb.primary();
    let all = names(&sb.wait_settled(&p0, LONG));

    // Declared without wal_level = logical: refused, nothing changed.
    let out = sb.cli(&[
        "config",
        "set",
        "slots.cdc.type=logical",
        "slots.cdc.database=postgres",
        "slots.cdc.plugin=test_decoding",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("wal_level=logical"),
        "{}",
        stderr(&out)
    );

    let out = sb.cli(&[
        "config",
        "set",
        "postgresql.parameters.wal_level=logical",
        "slots.cdc.type=logical",
        "slots.cdc.database=postgres",
        "slots.cdc.plugin=test_decoding",
    ]);
    assert!(out.status.success(), "config set: {}", stderr(&out));
    let out = sb.cli(&["node", "restart", "--role", "any", "--pending"]);
    assert!(out.status.success(), "rolling restart: {}", stderr(&out));
    let s = sb.wait_settled(&p0, LONG);
    assert_eq!(s["primary"], p0.as_str(), "{s}");

    psql(
        &sb.conninfo(&p0),
        "CREATE TABLE cdc_rows (id bigint PRIMARY KEY)",
    )
    .expect("create table");
    let replicas = |p: &str| -> Vec<String> { all.iter().filter(|n| *n != p).cloned().collect() };
    // The primary created the slot; each replica copied it, was restarted
    // to load it, and follows the primary's position.
    poll("the slot on the primary", LONG, || {
        let got = copy_state(&sb, &p0)?;
        got.starts_with("logical test_decoding")
            .then_some(())
            .ok_or(got)
    });
    let mut consumer = Consumer {
        seen: Vec::new(),
        position: None,
    };
    insert(&sb, &p0, 1, 20);
    consumer.read(&sb, &p0).expect("read on the first primary");
    assert_eq!(consumer.seen, (1..=20).collect::<Vec<_>>());
    wait_copies_at_primary(&sb, &p0, &replicas(&p0));

    // Switchover: the consumer goes on on the new primary.
    let target = replicas(&p0)[0].clone();
    let out = sb.cli(&["switchover", "--to", &target, "--force"]);
    assert!(out.status.success(), "switchover: {}", stderr(&out));
    sb.wait_settled(&target, LONG);
    insert(&sb, &target, 21, 40);
    poll("the consumer on the new primary", LONG, || {
        consumer.read(&sb, &target)
    });
    assert_eq!(consumer.seen, (1..=40).collect::<Vec<_>>());

    // A crash right after the consumer confirmed more than the replicas'
    // copies may have caught up with: it resumes from its own position.
    insert(&sb, &target, 41, 60);
    consumer.read(&sb, &target).expect("read before the crash");
    wait_replayed(&sb, &target, &replicas(&target));
    sb.must("crash", &target);
    let p2 = sb.new_primary(&target);
    poll("the consumer after the crash", LONG, || {
        consumer.read(&sb, &p2)
    });
    insert(&sb, &p2, 61, 70);
    consumer.read(&sb, &p2).expect("read on the third primary");
    assert_eq!(consumer.seen, (1..=70).collect::<Vec<_>>());

    // The crashed node comes back as a replica and keeps a copy too.
    sb.must("start", &target);
    sb.wait_settled(&p2, LONG);
    wait_copies_at_primary(&sb, &p2, &replicas(&p2));

    // Removed from the configuration: dropped on every node.
    let out = sb.cli(&["config", "set", "slots.cdc="]);
    assert!(out.status.success(), "remove the slot: {}", stderr(&out));
    for n in &all {
        poll(&format!("cdc dropped on {n}"), LONG, || {
            let got = copy_state(&sb, n)?;
            got.is_empty().then_some(()).ok_or(got)
        });
    }
}
