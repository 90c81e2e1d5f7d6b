//! Who may do what on a manager.
//!
//! With TLS, every connection is encrypted and the manager's certificate is
//! checked by the client; a client certificate is optional in the handshake
//! (when one is presented it must be signed by the CA, or the handshake
//! fails). The services then decide:
//!
//! * Raft between managers and the agent channel: a client certificate.
//! * State-changing API calls: a client certificate, or the bearer token
//!   of `api_token_file`.
//! * Read-only API calls: nothing more than the TLS connection.
//!
//! Without TLS nothing is checked, except the token for state-changing API
//! calls when `api_token_file` is set.

use tonic::{Request, Status};

use super::token::{Token, AUTHORIZATION};

/// The server side's checks, shared by every service of one manager.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    tls: bool,
    token: Option<Token>,
}

fn has_client_cert<T>(request: &Request<T>) -> bool {
    request.peer_certs().is_some_and(|certs| !certs.is_empty())
}

impl Guard {
    /// `tls`: the server runs TLS (client certificates can be checked).
    pub fn new(tls: bool, token: Option<Token>) -> Self {
        Guard { tls, token }
    }

    /// Calls only managers and agents make (`what` names them in the
    /// refusal): a client certificate signed by the CA.
    pub fn peer<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        if !self.tls || has_client_cert(request) {
            return Ok(());
        }
        Err(Status::unauthenticated(format!(
            "{what} needs a client certificate signed by the cluster CA; none was presented: give the agent or manager [tls] cert and key"
        )))
    }

    /// State-changing API calls (`what` names the call): a client
    /// certificate, or the bearer token.
    pub fn write<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        if self.tls && has_client_cert(request) {
            return Ok(());
        }
        let presented = request.metadata().get(AUTHORIZATION);
        match (&self.token, presented) {
            (Some(token), Some(value)) if token.matches_header(value.as_bytes()) => Ok(()),
            (Some(_), Some(_)) => Err(Status::unauthenticated(format!(
                "{what} refused: the token does not match this manager's api_token_file"
            ))),
            (Some(_), None) if self.tls => Err(Status::unauthenticated(format!(
                "{what} changes the cluster and needs a token (--token or PGQUORUM_TOKEN) or a client certificate (--tls-cert and --tls-key)"
            ))),
            (Some(_), None) => Err(Status::unauthenticated(format!(
                "{what} changes the cluster and needs a token (--token or PGQUORUM_TOKEN)"
            ))),
            (None, _) if self.tls => Err(Status::unauthenticated(format!(
                "{what} changes the cluster and needs a client certificate signed by the cluster CA (--tls-cert and --tls-key); this manager accepts no tokens (no api_token_file)"
            ))),
            (None, _) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(value: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(AUTHORIZATION, value.parse().unwrap());
        r
    }

    #[test]
    fn plaintext_without_token_is_open() {
        let g = Guard::default();
        assert!(g.peer(&Request::new(()), "raft").is_ok());
        assert!(g.write(&Request::new(()), "pause").is_ok());
    }

    #[test]
    fn tokens_are_checked() {
        let token = Token::new("s3cret", "test").unwrap();
        for tls in [false, true] {
            let g = Guard::new(tls, Some(token.clone()));
            assert!(g.write(&with_token("Bearer s3cret"), "pause").is_ok());
            let e = g.write(&with_token("Bearer nope"), "pause").unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert!(e.message().contains("does not match"), "{}", e.message());
            let e = g.write(&Request::new(()), "pause").unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert!(e.message().contains("needs a token"), "{}", e.message());
        }
    }

    #[test]
    fn tls_needs_certificates() {
        let g = Guard::new(true, None);
        let e = g.peer(&Request::new(()), "the agent channel").unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("client certificate"));
        let e = g.write(&with_token("Bearer x"), "pause").unwrap_err();
        assert!(e.message().contains("accepts no tokens"), "{}", e.message());
    }
}
