//! The example configurations in deploy/ stay valid as the code changes.

use pgquorum::agent::config::AgentFile;
use pgquorum::manager::config::ManagerFile;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("example file")
}

#[test]
fn example_configurations_parse() {
    let m: ManagerFile = toml::from_str(&read("manager.toml")).expect("deploy/manager.toml");
    assert_eq!(m.id, Some(1));
    let a: AgentFile = toml::from_str(&read("agent.toml")).expect("deploy/agent.toml");
    assert_eq!(a.name.as_deref(), Some("db1"));
    assert!(a.postgresql.hba.is_some());
    assert_eq!(a.spawn_keeper, Some(false), "the keeper has its own unit");
    assert_eq!(a.watchdog.as_deref(), Some("auto"));
    // Shipped with TLS on: on these non-loopback addresses they would not
    // start otherwise.
    for (what, tls) in [("manager", &m.tls), ("agent", &a.tls)] {
        assert!(
            tls.ca.is_some() && tls.cert.is_some() && tls.key.is_some() && tls.http_cert.is_some(),
            "deploy/{what}.toml without TLS"
        );
    }
    assert_eq!(m.insecure, None);
    assert_eq!(a.insecure, None);
    assert!(read("haproxy.cfg").contains("check-ssl verify required ca-file"));
}

#[test]
fn systemd_units_keep_postgres_with_the_keeper() {
    let keeper = read("pgquorum-keeper.service");
    assert!(keeper.contains("pgquorum keeper --config /etc/pgquorum/agent.toml"));
    assert!(keeper.contains("KillMode=mixed"), "{keeper}");
    let agent = read("pgquorum-agent.service");
    assert!(agent.contains("BindsTo=pgquorum-keeper.service"), "{agent}");
    assert!(agent.contains("After=network-online.target pgquorum-keeper.service"));
    assert!(
        agent.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{agent}"
    );
}
