//! The CLI's connection to the managers: any of them will do. A manager that
//! is down, or has no leader for a moment, is skipped or retried until a
//! deadline, so that commands keep working through a leader change.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::proto::api::pg_quorum_client::PgQuorumClient;
use crate::security::{ClientSecurity, Token};
use crate::transport;

/// Adds `authorization: Bearer <token>` to every call when there is a token.
#[derive(Clone, Default)]
pub struct BearerAuth(Option<Token>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert(crate::security::token::AUTHORIZATION, token.header_value());
        }
        Ok(request)
    }
}

/// The public API client the CLI's calls get.
pub type Api = PgQuorumClient<InterceptedService<Channel, BearerAuth>>;

/// How long the CLI keeps trying before it reports the managers unreachable.
const RETRY_FOR: Duration = Duration::from_secs(15);

/// A client of the public API over a list of manager addresses.
pub struct ApiClient {
    addresses: Vec<String>,
    channels: Vec<Channel>,
    auth: BearerAuth,
    tls: bool,
    /// Per-call timeout.
    pub timeout: Duration,
}

/// The call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The managers answered with a refusal (bad argument, not found…).
    #[error("{}", .0.message())]
    Refused(Status),
    #[error("no manager answered at {addresses} within {seconds}s (last error: {last}); are the managers running? (--managers / PGQUORUM_MANAGERS){hint}")]
    Unreachable {
        addresses: String,
        seconds: u64,
        last: String,
        hint: &'static str,
    },
    #[error("{address} does not answer as a pgquorum manager ({message}): is it another service (an agent's HTTP port, PostgreSQL)? check --managers (PGQUORUM_MANAGERS); if it is a manager with TLS, give --tls-ca (PGQUORUM_TLS_CA) with the CA that signed its certificate")]
    NeedsTls { address: String, message: String },
    #[error("nothing listens at {addresses} (connection refused): no manager runs there; check --managers (PGQUORUM_MANAGERS) and that the managers are up")]
    NothingListening { addresses: String },
    #[error("the managers' certificates are not accepted ({last}): give --tls-ca the CA that signed them, and make sure they name the addresses in --managers")]
    BadServerCertificate { last: String },
}

impl ClientError {
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Refused(s) => Some(s.code()),
            ClientError::Unreachable { .. }
            | ClientError::NothingListening { .. }
            | ClientError::NeedsTls { .. }
            | ClientError::BadServerCertificate { .. } => None,
        }
    }
}

/// The call failed because nothing listens at the address: the
/// connection was refused. Unlike a manager without a leader for a
/// moment, that is not worth waiting out.
fn refused(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = e.source();
    }
    status.message().contains("Connection refused")
}

/// Rounds of "connection refused" from every manager before giving up:
/// a manager restarting has its port closed for a moment only.
const REFUSED_ROUNDS: u32 = 2;

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

impl ApiClient {
    /// A plaintext client without a token; `addresses` is the `--managers`
    /// list; every entry is checked.
    pub fn new(addresses: &[String]) -> Result<Self, transport::ChannelError> {
        Self::secure(addresses, &ClientSecurity::plaintext())
    }

    /// A client with TLS and/or a token.
    pub fn secure(
        addresses: &[String],
        security: &ClientSecurity,
    ) -> Result<Self, transport::ChannelError> {
        let mut channels = Vec::new();
        for a in addresses {
            channels.push(transport::channel(a, security.tls.as_ref())?);
        }
        Ok(ApiClient {
            addresses: addresses.to_vec(),
            channels,
            auth: BearerAuth(security.token.clone()),
            tls: security.tls.is_some(),
            timeout: Duration::from_secs(10),
        })
    }

    /// Call `f` on each manager in turn until one answers or the deadline
    /// passes. Refusals (anything but "unavailable") end the call at once.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Api, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + RETRY_FOR.max(self.timeout);
        let mut last = String::from("none");
        let mut refused_rounds = 0;
        loop {
            // A manager whose certificate this client rejects will not
            // change its mind: when every manager fails that way, stop.
            let mut rejected = 0;
            let mut refusing = 0;
            for (address, channel) in self.addresses.iter().zip(&self.channels) {
                let client = PgQuorumClient::with_interceptor(channel.clone(), self.auth.clone());
                match f(client, self.timeout).await {
                    Ok(response) => return Ok(response.into_inner()),
                    // Plain HTTP/2 against a TLS port fails in the protocol.
                    Err(status)
                        if !self.tls
                            && status.code() == Code::Internal
                            && status.message().contains("h2 protocol error") =>
                    {
                        return Err(ClientError::NeedsTls {
                            address: address.clone(),
                            message: status.message().to_string(),
                        });
                    }
                    Err(status) if retryable(&status) => {
                        tracing::debug!(code = ?status.code(), message = status.message(), "manager unavailable, trying the next");
                        if refused(&status) {
                            refusing += 1;
                        }
                        last = status.message().to_string();
                        if self.tls && last.contains("invalid peer certificate") {
                            rejected += 1;
                            last = format!("{address}: {last}");
                        }
                    }
                    Err(status) => return Err(ClientError::Refused(status)),
                }
            }
            if rejected == self.channels.len() {
                return Err(ClientError::BadServerCertificate { last });
            }
            if refusing == self.channels.len() {
                refused_rounds += 1;
                if refused_rounds >= REFUSED_ROUNDS {
                    return Err(ClientError::NothingListening {
                        addresses: self.addresses.join(", "),
                    });
                }
            } else {
                refused_rounds = 0;
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Unreachable {
                    addresses: self.addresses.join(","),
                    seconds: RETRY_FOR.max(self.timeout).as_secs(),
                    last,
                    hint: if self.tls {
                        "; with TLS, check that --tls-ca is the CA that signed the managers' certificates and that they name the addresses given"
                    } else {
                        "; if the managers use TLS, give --tls-ca (PGQUORUM_TLS_CA)"
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A request with the per-call timeout set.
pub fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(timeout);
    r
}
