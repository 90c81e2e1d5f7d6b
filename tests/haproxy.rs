//! HAProxy itself, with the shipped `deploy/haproxy.cfg` (adapted to the
//! sandbox's addresses), checks the agents' endpoints — `/read-write` for
//! writes, `/read-only?lag=…` for reads — and routes clients to the right
//! node, before and after a switchover.

mod common;

use std::time::Duration;

use common::haproxy::{config_for_sandbox, HaProxy};
use common::sandbox::*;
use common::stderr;

const SETTLE: Duration = Duration::from_secs(120);

/// Where a connection through `port` lands: its server's port and whether
/// it is a replica.
fn lands_on(port: u16) -> Result<(u16, bool), String> {
    let out = psql(
        &node_conninfo(port),
        "SELECT current_setting('port') || ',' || pg_is_in_recovery()",
    )?;
    let (p, recovery) = out.split_once(',').ok_or_else(|| out.clone())?;
    Ok((p.parse().map_err(|_| out.clone())?, recovery == "true"))
}

#[test]
fn haproxy_sends_writes_to_the_primary_and_reads_to_a_replica_across_a_switchover() {
    let sb = Sandbox::up("haproxy", 3);
    let p0 = poll("a primary", SETTLE, || {
        sb.status()?["primary"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "no primary yet".to_string())
    });
    sb.wait_settled(&p0, SETTLE);
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg"))
            .expect("deploy/haproxy.cfg");
    assert!(
        shipped.contains("option httpchk GET /read-write"),
        "{shipped}"
    );
    assert!(
        shipped.contains("option httpchk GET /replica?lag="),
        "{shipped}"
    );
    assert!(
        shipped.contains("option httpchk GET /read-only?lag=1MB"),
        "{shipped}"
    );
    let base = free_base_port();
    let (writes, reads, anywhere) = (base, base + 1, base + 2);
    let _haproxy = HaProxy::start(sb.path(), &config_for_sandbox(&sb.file(), base));

    poll(
        "writes through HAProxy on the primary",
        SETTLE,
        || match lands_on(writes)? {
            (port, false) if port == sb.pg_port(&p0) => Ok(()),
            other => Err(format!("landed on {other:?}")),
        },
    );
    psql(
        &node_conninfo(writes),
        "CREATE TABLE through_haproxy (id int PRIMARY KEY); INSERT INTO through_haproxy VALUES (1)",
    )
    .expect("a write through HAProxy");
    poll(
        "reads through HAProxy on a replica",
        SETTLE,
        || match lands_on(reads)? {
            (port, true) if port != sb.pg_port(&p0) => Ok(()),
            other => Err(format!("landed on {other:?}")),
        },
    );

    // Read-only: every node within 1MB, the primary included, in turn.
    poll("read-only through HAProxy on every node", SETTLE, || {
        let ports: std::collections::BTreeSet<u16> = (0..9)
            .map(|_| lands_on(anywhere).map(|(p, _)| p))
            .collect::<Result<_, _>>()?;
        (ports.len() == 3).then_some(()).ok_or(format!("{ports:?}"))
    });

    // A switchover: HAProxy follows the lease-backed endpoints.
    let names: Vec<String> = sb.file()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    let p1 = names.iter().find(|n| **n != p0).unwrap().clone();
    let out = sb.cli(&["switchover", "--to", &p1, "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    poll(
        "writes through HAProxy on the new primary",
        SETTLE,
        || match lands_on(writes)? {
            (port, false) if port == sb.pg_port(&p1) => Ok(()),
            other => Err(format!("landed on {other:?}")),
        },
    );
    psql(
        &node_conninfo(writes),
        "INSERT INTO through_haproxy VALUES (2)",
    )
    .expect("a write through HAProxy after the switchover");
    sb.wait_settled(&p1, SETTLE);
    poll(
        "reads through HAProxy on a replica again",
        SETTLE,
        || match lands_on(reads)? {
            (port, true) if port != sb.pg_port(&p1) => {
                let rows = psql(
                    &node_conninfo(reads),
                    "SELECT count(*) FROM through_haproxy",
                )?;
                (rows == "2").then_some(()).ok_or(rows)
            }
            other => Err(format!("landed on {other:?}")),
        },
    );
}
