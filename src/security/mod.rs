//! Transport security: TLS for every gRPC connection, mutual TLS between
//! managers and agents, bearer tokens for the CLI, optional HTTPS for the
//! HTTP endpoints, and `pgquorum tls init` for test deployments.
//!
//! * [`Tls`] — a CA and (optionally) this process's own certificate and
//!   key, read and checked once at start, then turned into tonic's client
//!   and server TLS settings.
//! * [`ClientSecurity`] — what a dialer brings: TLS (or none) and a token.
//! * [`token`] — the bearer token and its constant-time comparison.
//! * [`guard`] — the server's checks: who may do what.
//! * [`http`] — HTTPS for the axum servers (agent endpoints, metrics).
//! * [`init`] — a CA, node and client certificates and a token for tests.
//!
//! See docs/security.md for the model.

pub mod exposure;
pub mod guard;
pub mod http;
pub mod init;
pub mod token;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

pub use guard::Guard;
pub use token::Token;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS file that cannot be used; the process does not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}; check the path and its permissions")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is not usable PEM: {message}; expected {expected}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
        expected: &'static str,
    },
    #[error("{what} {path}: {message}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Settings(String),
}

/// `[tls]` in a manager's or an agent's configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The CA that signs every manager's and agent's certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM), signed by `ca`; usable as a server
    /// certificate (managers) and as a client certificate (both).
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// Serve the HTTP endpoints (agent health/metrics, manager metrics)
    /// over HTTPS with this certificate (PEM)…
    pub http_cert: Option<PathBuf>,
    /// …and this key.
    pub http_key: Option<PathBuf>,
}

/// The TLS file names a process was given, before they are read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsPaths {
    /// Flags over file: each flag wins over its key.
    pub fn over(&self, file: &TlsFile) -> TlsPaths {
        TlsPaths {
            ca: self.ca.clone().or_else(|| file.ca.clone()),
            cert: self.cert.clone().or_else(|| file.cert.clone()),
            key: self.key.clone().or_else(|| file.key.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Read and check the files. `None` when none is given (plaintext);
    /// with `identity_required`, a certificate and key must come with the CA.
    /// `names` names the options in messages.
    pub fn load(&self, identity_required: bool, names: &TlsNames) -> Result<Option<Tls>, TlsError> {
        if self.is_empty() {
            return Ok(None);
        }
        let Some(ca) = &self.ca else {
            return Err(TlsError::Settings(format!(
                "a TLS certificate was given without a CA: give {} (the CA that signs the managers' certificates)",
                names.ca
            )));
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) if !identity_required => None,
            (None, None) => {
                return Err(TlsError::Settings(format!(
                    "TLS needs this process's own certificate and key too: give {} and {} (see `pgquorum tls init`)",
                    names.cert, names.key
                )))
            }
            (Some(_), None) => {
                return Err(TlsError::Settings(format!(
                    "{} is given without {}: give both, or neither",
                    names.cert, names.key
                )))
            }
            (None, Some(_)) => {
                return Err(TlsError::Settings(format!(
                    "{} is given without {}: give both, or neither",
                    names.key, names.cert
                )))
            }
        };
        Tls::load(ca, identity).map(Some)
    }
}

/// How a role names its TLS options, for messages.
#[derive(Debug, Clone, Copy)]
pub struct TlsNames {
    pub ca: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
}

/// The names used by `pgquorum manager` and `pgquorum agent`.
pub const CONFIG_NAMES: TlsNames = TlsNames {
    ca: "--tls-ca (tls.ca)",
    cert: "--tls-cert (tls.cert)",
    key: "--tls-key (tls.key)",
};

/// The names used by the CLI.
pub const CLI_NAMES: TlsNames = TlsNames {
    ca: "--tls-ca (PGQUORUM_TLS_CA)",
    cert: "--tls-cert (PGQUORUM_TLS_CERT)",
    key: "--tls-key (PGQUORUM_TLS_KEY)",
};

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
            expected: "one or more -----BEGIN CERTIFICATE----- blocks",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            message: "no certificate found".to_string(),
            expected: "one or more -----BEGIN CERTIFICATE----- blocks",
        });
    }
    Ok((pem, certs))
}

/// The private key in a PEM file.
pub fn read_key(
    what: &'static str,
    path: &Path,
) -> Result<(Vec<u8>, PrivateKeyDer<'static>), TlsError> {
    let pem = read(what, path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no private key found".to_string(),
            other => other.to_string(),
        },
        expected: "a -----BEGIN PRIVATE KEY----- (or EC/RSA PRIVATE KEY) block",
    })?;
    Ok((pem, key))
}

/// The ring crypto provider, named once (no process-wide default is
/// installed, so nothing depends on which provider another crate enabled).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server certificate and key checked to belong together.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let (_, certs) = read_certs("certificate", cert_path)?;
    let (_, key) = read_key("private key", key_path)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Settings(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid {
            what: "private key",
            path: key_path.to_path_buf(),
            message: format!(
                "cannot be used with certificate {}: {e}",
                cert_path.display()
            ),
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// This process's certificate and key, as PEM.
#[derive(Clone)]
struct OwnIdentity {
    cert_path: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// A CA and, optionally, this process's certificate and key: read and
/// checked once, used for every connection.
#[derive(Clone)]
pub struct Tls {
    ca_path: PathBuf,
    ca: Vec<u8>,
    roots: Arc<RootCertStore>,
    identity: Option<OwnIdentity>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca_path)
            .field("cert", &self.identity.as_ref().map(|i| &i.cert_path))
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Read the CA and (when given) the certificate and key; check that the
    /// PEM parses, that the key belongs to the certificate and that the
    /// certificate is a client certificate signed by the CA.
    pub fn load(ca_path: &Path, identity: Option<(&Path, &Path)>) -> Result<Tls, TlsError> {
        let (ca, ca_certs) = read_certs("CA certificate", ca_path)?;
        let mut roots = RootCertStore::empty();
        for cert in ca_certs {
            roots.add(cert).map_err(|e| TlsError::Invalid {
                what: "CA certificate",
                path: ca_path.to_path_buf(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let roots = Arc::new(roots);
        let identity = match identity {
            None => None,
            Some((cert_path, key_path)) => {
                let (cert_pem, certs) = read_certs("certificate", cert_path)?;
                let (key_pem, _) = read_key("private key", key_path)?;
                // Parses the key and checks it matches the certificate.
                server_config(cert_path, key_path, &[])?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                        .build()
                        .map_err(|e| TlsError::Invalid {
                            what: "CA certificate",
                            path: ca_path.to_path_buf(),
                            message: e.to_string(),
                        })?;
                verifier
                    .verify_client_cert(&certs[0], &certs[1..], UnixTime::now())
                    .map_err(|e| TlsError::Invalid {
                        what: "certificate",
                        path: cert_path.to_path_buf(),
                        message: format!(
                            "is not a valid client certificate under the CA {}: {e}; issue it from that CA with client (and, for managers, server) usage",
                            ca_path.display()
                        ),
                    })?;
                Some(OwnIdentity {
                    cert_path: cert_path.to_path_buf(),
                    chain: certs,
                    cert: cert_pem,
                    key: key_pem,
                })
            }
        };
        Ok(Tls {
            ca_path: ca_path.to_path_buf(),
            ca,
            roots,
            identity,
        })
    }

    /// Check that this process's certificate is a server certificate for
    /// `host` (the host others dial), so that a wrong certificate fails at
    /// start rather than at every connection.
    pub fn check_server_name(&self, host: &str) -> Result<(), TlsError> {
        let Some(id) = &self.identity else {
            return Ok(());
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let invalid = |message: String| TlsError::Invalid {
            what: "certificate",
            path: id.cert_path.clone(),
            message,
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| invalid(format!("{host:?} is not a host name or IP address: {e}")))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        verifier
            .verify_server_cert(&id.chain[0], &id.chain[1..], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| {
                invalid(format!(
                    "is not a valid server certificate for {host} (the host others dial): {e}; issue it with {host} as a subject alternative name (`pgquorum tls init --hosts`)"
                ))
            })
    }

    /// Whether this process has a certificate of its own.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// Client settings for dialing `host` (the certificate must name it).
    pub fn client_config(&self, host: &str) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name(host.trim_start_matches('[').trim_end_matches(']'))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(id) = &self.identity {
            config = config.identity(Identity::from_pem(&id.cert, &id.key));
        }
        config
    }

    /// An HTTPS client that trusts this CA (agent to agent, for failsafe).
    pub fn http_client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(format!("TLS client: {e}")))?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth())
    }

    /// Server settings: this process's certificate; clients may present a
    /// certificate signed by the CA (checked in the handshake), and the
    /// services decide who must (see [`Guard`]).
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let id = self.identity.as_ref().ok_or_else(|| {
            TlsError::Settings(
                "a TLS server needs a certificate and key: give --tls-cert and --tls-key"
                    .to_string(),
            )
        })?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(&id.cert, &id.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT))
    }
}

/// What a dialer brings to a manager: TLS settings (none: plaintext) and a
/// bearer token for state-changing API calls.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    pub tls: Option<Tls>,
    pub token: Option<Token>,
}

impl ClientSecurity {
    /// Plaintext, no token.
    pub fn plaintext() -> Self {
        ClientSecurity::default()
    }
}

/// The HTTP server's TLS from `[tls] http_cert` and `http_key`.
pub fn http_config(file: &TlsFile) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    match (&file.http_cert, &file.http_key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(Arc::new(server_config(cert, key, &[b"http/1.1"])?))),
        _ => Err(TlsError::Settings(
            "tls.http_cert and tls.http_key go together: give both, or neither".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn missing_and_invalid_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = Tls::load(&missing, None).unwrap_err().to_string();
        assert!(
            err.contains("nope.pem") && err.contains("cannot read"),
            "{err}"
        );

        let garbage = write(dir.path(), "garbage.pem", "hello\n");
        let err = Tls::load(&garbage, None).unwrap_err().to_string();
        assert!(
            err.contains("garbage.pem") && err.contains("no certificate"),
            "{err}"
        );

        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        );
        let err = Tls::load(&broken, None).unwrap_err().to_string();
        assert!(err.contains("broken.pem"), "{err}");
    }

    #[test]
    fn a_generated_set_loads_and_mismatches_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tls");
        init::generate(&out, &["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let p = |n: &str| out.join(n);
        let tls = Tls::load(&p("ca.pem"), Some((&p("node.pem"), &p("node.key")))).unwrap();
        assert!(tls.has_identity());
        tls.server_config().unwrap();
        tls.check_server_name("127.0.0.1").unwrap();
        tls.check_server_name("localhost").unwrap();
        let err = tls.check_server_name("10.1.2.3").unwrap_err().to_string();
        assert!(
            err.contains("node.pem") && err.contains("10.1.2.3"),
            "{err}"
        );
        Tls::load(&p("ca.pem"), Some((&p("client.pem"), &p("client.key")))).unwrap();

        // A key that is not the certificate's.
        let err = Tls::load(&p("ca.pem"), Some((&p("node.pem"), &p("client.key"))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("client.key") && err.contains("node.pem"),
            "{err}"
        );

        // A key file holding a certificate.
        let err = Tls::load(&p("ca.pem"), Some((&p("node.pem"), &p("node.pem"))))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no private key"), "{err}");

        // A certificate from another CA.
        let other = dir.path().join("other");
        init::generate(&other, &["127.0.0.1".to_string()]).unwrap();
        let err = Tls::load(
            &p("ca.pem"),
            Some((&other.join("node.pem"), &other.join("node.key"))),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a valid client certificate"), "{err}");
    }

    #[test]
    fn settings_must_be_complete() {
        let names = CONFIG_NAMES;
        let only_cert = TlsPaths {
            cert: Some("/x.pem".into()),
            key: Some("/x.key".into()),
            ..TlsPaths::default()
        };
        let err = only_cert.load(true, &names).unwrap_err().to_string();
        assert!(err.contains("without a CA"), "{err}");
        let no_key = TlsPaths {
            ca: Some("/ca.pem".into()),
            cert: Some("/x.pem".into()),
            ..TlsPaths::default()
        };
        let err = no_key.load(false, &names).unwrap_err().to_string();
        assert!(err.contains("without --tls-key"), "{err}");
        let ca_only = TlsPaths {
            ca: Some("/ca.pem".into()),
            ..TlsPaths::default()
        };
        let err = ca_only.load(true, &names).unwrap_err().to_string();
        assert!(err.contains("own certificate and key"), "{err}");
        assert!(TlsPaths::default().load(true, &names).unwrap().is_none());
    }
}
