//! `pgquorum tls init DIR`: a CA, one node certificate shared by managers
//! and agents, a client certificate for the CLI and a random API token, for
//! a test deployment. Production deployments issue one certificate per
//! host from their own CA (see docs/security.md).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// The files `tls init` writes, in order, with what each is.
pub const FILES: [(&str, &str); 7] = [
    (
        "ca.pem",
        "CA certificate (every manager, agent and client trusts it)",
    ),
    (
        "ca.key",
        "CA private key (signs certificates: keep it off the servers)",
    ),
    (
        "node.pem",
        "node certificate for managers and agents (server and client use)",
    ),
    ("node.key", "node private key"),
    ("client.pem", "client certificate for the CLI"),
    ("client.key", "client private key"),
    ("token", "API token for state-changing CLI commands"),
];

/// Why the files could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{} already exist{}: tls init never overwrites; choose an empty directory or move them away", .0.join(", "), if .0.len() == 1 { "s" } else { "" })]
    Exists(Vec<String>),
    #[error("cannot create directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host {host:?}: {message}; give IP addresses or DNS names")]
    Host { host: String, message: String },
    #[error("no hosts: give --hosts HOST[,HOST...]")]
    NoHosts,
    #[error("cannot make the certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The current year, for validity periods (approximate is enough: the
/// certificates start a year back and run ten years on).
fn this_year() -> i32 {
    let secs = crate::wallclock::unix_secs();
    1970 + (secs / 31_556_952) as i32
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pgquorum");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn params(sans: &[String], common_name: &str) -> Result<CertificateParams, InitError> {
    let mut p = CertificateParams::new(sans.to_vec()).map_err(|e| InitError::Host {
        host: sans.join(","),
        message: e.to_string(),
    })?;
    let year = this_year();
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    p.distinguished_name = name(common_name);
    Ok(p)
}

/// The PEM texts, by file name.
pub struct Generated {
    pub files: Vec<(&'static str, String)>,
}

/// Make every file's contents (nothing is written).
pub fn make(hosts: &[String]) -> Result<Generated, InitError> {
    if hosts.is_empty() {
        return Err(InitError::NoHosts);
    }
    for h in hosts {
        if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(InitError::Host {
                host: h.clone(),
                message: "not a host name or IP address".to_string(),
            });
        }
    }
    let mut ca = params(&[], "pgquorum test CA")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let node_key = KeyPair::generate()?;
    let mut node = params(hosts, "pgquorum node")?;
    node.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    node.use_authority_key_identifier_extension = true;
    let node = node.signed_by(&node_key, &ca)?;

    let client_key = KeyPair::generate()?;
    let mut client = params(&[], "pgquorum client")?;
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.use_authority_key_identifier_extension = true;
    let client = client.signed_by(&client_key, &ca)?;

    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();

    Ok(Generated {
        files: vec![
            ("ca.pem", ca.pem()),
            ("ca.key", ca.key().serialize_pem()),
            ("node.pem", node.pem()),
            ("node.key", node_key.serialize_pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
            ("token", format!("{token}\n")),
        ],
    })
}

fn is_secret(file: &str) -> bool {
    file.ends_with(".key") || file == "token"
}

/// Write every file into `dir` (created if missing), refusing to overwrite
/// any; keys and the token are readable by their owner only.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<Vec<PathBuf>, InitError> {
    let existing: Vec<String> = FILES
        .iter()
        .map(|(f, _)| dir.join(f))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        return Err(InitError::Exists(existing));
    }
    let generated = make(hosts)?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|source| InitError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| InitError::Dir {
                path: dir.to_path_buf(),
                source,
            },
        )?;
    }
    let mut written = Vec::new();
    for (file, text) in &generated.files {
        let path = dir.join(file);
        let mode = if is_secret(file) { 0o600 } else { 0o644 };
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        };
        write().map_err(|source| InitError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// What to tell the person who ran `tls init`.
pub fn instructions(dir: &Path, hosts: &[String]) -> String {
    let d = dir.display();
    let mut out = String::new();
    for (file, what) in FILES {
        out.push_str(&format!("wrote {d}/{file}  {what}\n"));
    }
    out.push_str(&format!(
        "\nThe node certificate is valid for: {}\n\
         \nManagers (flags, or [tls] ca/cert/key and api_token_file in the config file):\n  \
         pgquorum manager ... --tls-ca {d}/ca.pem --tls-cert {d}/node.pem --tls-key {d}/node.key --api-token-file {d}/token\n\
         \nAgents (mutual TLS to the managers):\n  \
         pgquorum agent ... --tls-ca {d}/ca.pem --tls-cert {d}/node.pem --tls-key {d}/node.key\n\
         \nCLI, with the token:\n  \
         export PGQUORUM_TLS_CA={d}/ca.pem PGQUORUM_TOKEN_FILE={d}/token\n\
         or with the client certificate:\n  \
         pgquorum --tls-ca {d}/ca.pem --tls-cert {d}/client.pem --tls-key {d}/client.key status\n",
        hosts.join(", ")
    ));
    out
}
