//! The configuration files the driver owns.
//!
//! * `pgquorum.conf` in the data directory, rewritten whole on every change
//!   and included from the end of `postgresql.conf`, so it wins over that
//!   file. Operators' own `postgresql.conf` edits survive; every name
//!   pgquorum owns is set there, empty if need be, so that none set in
//!   `postgresql.conf` (a taken-over Patroni node's upstream and slot) stays
//!   in force.
//! * The `# BEGIN pgquorum` … `# END pgquorum` region at the top of
//!   `pg_hba.conf` (first match wins, so ours take precedence).
//! * Settings pgquorum must decide alone (where to listen, whom to follow,
//!   the synchronous standby names, the archive) are removed from
//!   `postgresql.auto.conf`, which PostgreSQL reads last: `pg_basebackup -R`
//!   or an `ALTER SYSTEM` would otherwise silently override them.
//!
//! pg_basebackup and pg_rewind copy all of these files from the source
//! server: call [`Postgres::write_config`] after either, before starting.

use std::fmt::Write as _;
use std::path::Path;

use super::{ManagedSettings, PgConfig, PgError, Postgres, Upstream};

const INCLUDE_LINE: &str = "include_if_exists = 'pgquorum.conf'";
const HBA_BEGIN: &str = "# BEGIN pgquorum";
const HBA_END: &str = "# END pgquorum";

/// Settings with a default that operator parameters may override.
fn defaults(cfg: &PgConfig) -> Vec<(&'static str, String)> {
    vec![
        ("cluster_name", cfg.node_name.clone()),
        ("wal_level", "replica".into()),
        ("hot_standby", "on".into()),
        ("max_wal_senders", "10".into()),
        ("max_replication_slots", "10".into()),
        // Bounds what a slot of a long-gone replica can hold back: past it
        // the slot is lost (and re-created) rather than the disk filled.
        ("max_slot_wal_keep_size", "8GB".into()),
        ("wal_keep_size", "1GB".into()),
        // pg_rewind needs hint bits in WAL (or data checksums).
        ("wal_log_hints", "on".into()),
        ("hot_standby_feedback", "on".into()),
        // Report to the primary and retry a lost upstream quickly.
        ("wal_receiver_status_interval", "1s".into()),
        ("wal_retrieve_retry_interval", "1s".into()),
    ]
}

/// Names pgquorum alone decides (operator parameters for them are ignored
/// and they are stripped from postgresql.auto.conf).
fn owned_names(cfg: &PgConfig) -> Vec<&'static str> {
    let mut names = vec![
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "primary_conninfo",
        "primary_slot_name",
        "recovery_target_timeline",
        "synchronous_standby_names",
    ];
    if cfg.archive_dir.is_some() {
        names.extend(["archive_mode", "archive_command", "restore_command"]);
    }
    names
}

/// A quoted configuration-file value: `'` doubled, `\` doubled (the file
/// parser reads backslash escapes).
pub(crate) fn quote_guc(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A quoted libpq connection-string value.
pub(crate) fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A single-quoted shell word.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn check_name(name: &str) -> Result<(), PgError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(PgError::InvalidConfig(format!(
            "parameter name {name:?} is not a PostgreSQL setting name (letters, digits, _ and . only)"
        )))
    }
}

fn check_single_line(what: &str, value: &str) -> Result<(), PgError> {
    if value.contains(['\n', '\r', '\0']) {
        Err(PgError::InvalidConfig(format!(
            "{what} {value:?} contains a line break; it cannot go into a configuration file"
        )))
    } else {
        Ok(())
    }
}

/// `primary_conninfo` for following `up`: keepalives and a TCP user
/// timeout so a vanished primary is noticed in seconds, not minutes.
pub(crate) fn primary_conninfo(cfg: &PgConfig, up: &Upstream) -> String {
    let mut parts = vec![
        format!("host={}", quote_conninfo(&up.host)),
        format!("port={}", up.port),
        format!("user={}", quote_conninfo(&cfg.replication_user)),
    ];
    if let Some(pw) = &cfg.replication_password {
        parts.push(format!("password={}", quote_conninfo(pw)));
    }
    parts.push(format!(
        "application_name={}",
        quote_conninfo(&cfg.node_name)
    ));
    parts.extend(
        [
            "connect_timeout=2",
            "keepalives=1",
            "keepalives_idle=2",
            "keepalives_interval=1",
            "keepalives_count=3",
            "tcp_user_timeout=5000",
        ]
        .map(String::from),
    );
    parts.join(" ")
}

/// The whole of `pgquorum.conf`.
pub(crate) fn render_pgquorum_conf(
    cfg: &PgConfig,
    settings: &ManagedSettings,
    upstream: Option<&Upstream>,
) -> Result<String, PgError> {
    let owned = owned_names(cfg);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by pgquorum (config version {}); rewritten on every change, do not edit.\n\
         # Put your own settings in postgresql.conf or the cluster's dynamic configuration.",
        settings.config_version
    );
    let mut line = |name: &str, value: &str| -> Result<(), PgError> {
        check_single_line(name, value)?;
        let _ = writeln!(out, "{name} = {}", quote_guc(value));
        Ok(())
    };
    for (name, value) in defaults(cfg) {
        line(name, &value)?;
    }
    for (name, value) in &settings.parameters {
        check_name(name)?;
        if owned.contains(&name.to_ascii_lowercase().as_str()) {
            tracing::warn!(
                parameter = %name,
                "ignoring a dynamic parameter that pgquorum manages itself"
            );
            continue;
        }
        line(name, value)?;
    }
    line("listen_addresses", &cfg.listen_addresses)?;
    line("port", &cfg.port.to_string())?;
    line(
        "unix_socket_directories",
        &cfg.socket_dir.display().to_string(),
    )?;
    line(
        "synchronous_standby_names",
        &settings.synchronous_standby_names,
    )?;
    if let Some(dir) = &cfg.archive_dir {
        let dir = dir.display().to_string();
        let file = shell_quote(&format!("{dir}/"));
        line("archive_mode", "on")?;
        // Never overwrite a segment already archived (by the old primary).
        line(
            "archive_command",
            &format!("test ! -f {file}%f && cp %p {file}%f"),
        )?;
        line("restore_command", &format!("cp {file}%f %p"))?;
    }
    // Always present (a primary ignores it): it can only change with a
    // restart, so toggling it with the role would flag `pending_restart`.
    line("recovery_target_timeline", "latest")?;
    // Always set, empty when there is nothing to follow (or no slot to
    // use): `postgresql.conf` may set them too — Patroni's does, on a
    // taken-over replica — and an unset name here would leave that value in
    // force, streaming from whatever it names (a detached replica would
    // keep acknowledging the old primary).
    let conninfo = upstream.map(|up| primary_conninfo(cfg, up));
    line("primary_conninfo", conninfo.as_deref().unwrap_or(""))?;
    let slot = match upstream {
        Some(_) if settings.use_slots == Some(true) => {
            crate::cluster::slots::slot_name(&cfg.node_name)
        }
        _ => String::new(),
    };
    line("primary_slot_name", &slot)?;
    Ok(out)
}

/// `pg_hba.conf` with our region (re)placed at the top; everything else kept.
pub(crate) fn splice_hba(existing: &str, lines: &[String]) -> Result<String, PgError> {
    let all: Vec<&str> = existing.lines().collect();
    let begin = all.iter().position(|l| l.trim() == HBA_BEGIN);
    let end = all.iter().position(|l| l.trim() == HBA_END);
    let rest: Vec<&str> = match (begin, end) {
        (Some(b), Some(e)) if b < e => all[..b].iter().chain(&all[e + 1..]).copied().collect(),
        (None, None) => all,
        _ => {
            return Err(PgError::InvalidConfig(format!(
                "pg_hba.conf has an unmatched `{HBA_BEGIN}` / `{HBA_END}` marker; fix the file by \
                 hand (remove the broken region)"
            )))
        }
    };
    let mut out = String::new();
    out.push_str(HBA_BEGIN);
    out.push_str("\n# Managed by pgquorum: rewritten on every configuration change.\n");
    for l in lines {
        check_single_line("pg_hba.conf line", l)?;
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(HBA_END);
    out.push('\n');
    for l in rest {
        out.push_str(l);
        out.push('\n');
    }
    Ok(out)
}

/// The name a `postgresql.auto.conf` line sets, if any.
fn setting_name(line: &str) -> Option<String> {
    let l = line.trim_start();
    if l.starts_with('#') {
        return None;
    }
    let end = l.find(|c: char| c == '=' || c.is_whitespace())?;
    Some(l[..end].to_ascii_lowercase())
}

/// `postgresql.auto.conf` without the settings pgquorum owns; `None` when
/// nothing had to go.
pub(crate) fn strip_auto_conf(existing: &str, owned: &[&str]) -> Option<(String, Vec<String>)> {
    let mut removed = Vec::new();
    let mut out = String::new();
    for l in existing.lines() {
        match setting_name(l) {
            Some(name) if owned.contains(&name.as_str()) => removed.push(name),
            _ => {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    (!removed.is_empty()).then_some((out, removed))
}

/// `postgresql.conf` with the include line appended, or `None` when it is
/// there already.
pub(crate) fn with_include(existing: &str) -> Option<String> {
    let present = existing.lines().any(|l| {
        let l = l.trim();
        !l.starts_with('#') && l.starts_with("include_if_exists") && l.contains("pgquorum.conf")
    });
    if present {
        return None;
    }
    let mut out = existing.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("\n# Added by pgquorum: its managed settings win over the ones above.\n");
    out.push_str(INCLUDE_LINE);
    out.push('\n');
    Some(out)
}

fn read(path: &Path) -> Result<String, PgError> {
    std::fs::read_to_string(path).map_err(|e| PgError::io("read", path, e))
}

impl Postgres {
    /// Write pgquorum's configuration: `pgquorum.conf` (settings,
    /// `recovery_target_timeline='latest'`, and `primary_conninfo` /
    /// `primary_slot_name` for `upstream` — empty without one, overriding
    /// any in `postgresql.conf`), the include line in `postgresql.conf`, the
    /// managed region of `pg_hba.conf`, and owned names out of
    /// `postgresql.auto.conf`. Every file is replaced atomically and owned
    /// by the OS user. Takes effect at the next reload or start; a changed
    /// restart-only parameter shows as `pending_restart` in the status.
    pub async fn write_config(
        &self,
        settings: &ManagedSettings,
        upstream: Option<&Upstream>,
    ) -> Result<(), PgError> {
        let main = self.data("postgresql.conf");
        if !main.is_file() {
            return Err(PgError::Refused {
                action: "write the configuration of",
                path: self.cfg.data_dir.clone(),
                reason: "it holds no postgresql.conf".to_string(),
                hint: "initialise or clone the data directory first",
            });
        }
        let conf = render_pgquorum_conf(&self.cfg, settings, upstream)?;
        self.user
            .write_atomic(&self.data("pgquorum.conf"), conf.as_bytes(), 0o600)?;

        if let Some(text) = with_include(&read(&main)?) {
            self.user.write_atomic(&main, text.as_bytes(), 0o600)?;
        }

        let hba = self.data("pg_hba.conf");
        let existing = match std::fs::read_to_string(&hba) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(PgError::io("read", hba, e)),
        };
        let text = splice_hba(&existing, &self.cfg.hba)?;
        if text != existing {
            self.user.write_atomic(&hba, text.as_bytes(), 0o600)?;
        }

        let auto = self.data("postgresql.auto.conf");
        if auto.exists() {
            if let Some((text, removed)) = strip_auto_conf(&read(&auto)?, &owned_names(&self.cfg)) {
                tracing::warn!(
                    ?removed,
                    "removed settings pgquorum manages from postgresql.auto.conf"
                );
                self.user.write_atomic(&auto, text.as_bytes(), 0o600)?;
            }
        }

        if let Some(dir) = &self.cfg.archive_dir {
            self.user.ensure_dir(dir, 0o700, false)?;
        }
        tracing::info!(
            config_version = settings.config_version,
            upstream = upstream.map(|u| u.node.as_str()),
            sync = %settings.synchronous_standby_names,
            "wrote PostgreSQL configuration"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg() -> PgConfig {
        PgConfig {
            data_dir: PathBuf::from("/d"),
            socket_dir: PathBuf::from("/run/pg"),
            node_name: "n1".into(),
            port: 6000,
            ..PgConfig::default()
        }
    }

    #[test]
    fn quotes_values() {
        assert_eq!(quote_guc(r"a'b\c"), r"'a''b\\c'");
        assert_eq!(quote_conninfo(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn renders_owned_settings_last_and_conninfo() {
        let mut c = cfg();
        c.replication_password = Some("p'w".into());
        c.archive_dir = Some(PathBuf::from("/arch"));
        let mut s = ManagedSettings {
            synchronous_standby_names: "ANY 1 (n2)".into(),
            ..Default::default()
        };
        s.parameters.insert("work_mem".into(), "64MB".into());
        s.parameters.insert("port".into(), "1".into());
        let up = Upstream {
            node: "n0".into(),
            host: "10.0.0.1".into(),
            port: 5433,
        };
        let text = render_pgquorum_conf(&c, &s, Some(&up)).unwrap();
        assert!(text.contains("work_mem = '64MB'\n"), "{text}");
        assert!(
            text.contains("port = '6000'\n") && !text.contains("port = '1'"),
            "{text}"
        );
        assert!(text.contains("synchronous_standby_names = 'ANY 1 (n2)'"));
        assert!(
            text.contains(
                "primary_conninfo = 'host=''10.0.0.1'' port=5433 user=''replicator'' \
             password=''p\\\\''w'' application_name=''n1'' connect_timeout=2"
            ),
            "{text}"
        );
        assert!(text.contains("archive_command = 'test ! -f ''/arch/''%f && cp %p ''/arch/''%f'"));
        assert!(text.contains("recovery_target_timeline = 'latest'"));
        assert!(text.contains("primary_slot_name = ''\n"), "{text}");
        s.use_slots = Some(true);
        let text = render_pgquorum_conf(&c, &s, Some(&up)).unwrap();
        assert!(text.contains("primary_slot_name = 'pgq_n1'\n"), "{text}");
        let text = render_pgquorum_conf(&c, &s, None).unwrap();
        assert!(text.contains("primary_slot_name = ''\n"), "{text}");
        assert!(text.contains("primary_conninfo = ''\n"), "{text}");

        s.parameters.insert("bad\nname".into(), "x".into());
        assert!(render_pgquorum_conf(&c, &s, None).is_err());
    }

    /// A taken-over Patroni replica's `postgresql.conf` names the old
    /// upstream and Patroni's slot; `pgquorum.conf`, included after it,
    /// overrides both whatever the role — also with nothing to follow.
    #[test]
    fn overrides_a_foreign_upstream_and_slot_in_postgresql_conf() {
        let patroni = "include 'postgresql.base.conf'\nport = '5432'\n\n# recovery.conf\n\
                       primary_conninfo = 'host=10.0.0.9 port=5432 user=replicator'\n\
                       primary_slot_name = 'postgresql1'\n";
        let main = with_include(patroni).unwrap();
        assert!(main.starts_with(patroni) && main.ends_with(&format!("{INCLUDE_LINE}\n")));
        let last = |text: &str, name: &str| {
            text.lines()
                .rfind(|l| setting_name(l).as_deref() == Some(name))
                .map(str::to_string)
        };
        let up = Upstream {
            node: "n0".into(),
            host: "10.0.0.1".into(),
            port: 5433,
        };
        for (use_slots, upstream, slot) in [
            (Some(true), Some(&up), "'pgq_n1'"),
            (Some(false), Some(&up), "''"),
            (Some(true), None, "''"),
            (None, None, "''"),
        ] {
            let s = ManagedSettings {
                use_slots,
                ..Default::default()
            };
            let ours = render_pgquorum_conf(&cfg(), &s, upstream).unwrap();
            // What PostgreSQL ends up with: the last of each name.
            let all = format!("{main}{ours}");
            assert_eq!(
                last(&all, "primary_slot_name"),
                Some(format!("primary_slot_name = {slot}")),
                "{all}"
            );
            let conninfo = last(&all, "primary_conninfo").unwrap();
            match upstream {
                Some(_) => assert!(conninfo.contains("10.0.0.1"), "{conninfo}"),
                None => assert_eq!(conninfo, "primary_conninfo = ''"),
            }
        }
    }

    #[test]
    fn splices_hba_idempotently() {
        let lines = vec!["local all all trust".to_string()];
        let once = splice_hba("host all all 0.0.0.0/0 md5\n", &lines).unwrap();
        assert!(once.starts_with(HBA_BEGIN));
        let twice = splice_hba(&once, &lines).unwrap();
        assert_eq!(once, twice);
        assert!(twice.ends_with("host all all 0.0.0.0/0 md5\n"));
        assert!(splice_hba("# BEGIN pgquorum\nx\n", &lines).is_err());
    }

    #[test]
    fn strips_owned_auto_conf_settings_and_includes_once() {
        let auto = "# Do not edit\nprimary_conninfo = 'host=x'\nwork_mem = '1MB'\n";
        let (text, removed) = strip_auto_conf(auto, &owned_names(&cfg())).unwrap();
        assert_eq!(removed, vec!["primary_conninfo".to_string()]);
        assert_eq!(text, "# Do not edit\nwork_mem = '1MB'\n");
        assert!(strip_auto_conf(&text, &owned_names(&cfg())).is_none());

        let main = with_include("max_connections = 100").unwrap();
        assert!(main.ends_with("include_if_exists = 'pgquorum.conf'\n"));
        assert!(with_include(&main).is_none());
    }
}
