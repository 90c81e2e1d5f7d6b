//! gRPC client connections, one place for every dialer (managers to each
//! other, agents and the CLI to managers): address checks, timeouts and
//! keep-alives are the same everywhere.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::security::Tls;

/// How long to wait for a TCP connection before calling a peer unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The address is not of the `HOST:PORT` form.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {address:?}: expected HOST:PORT, for example 127.0.0.1:7001")]
pub struct BadAddress {
    pub address: String,
}

/// Check that `address` is `HOST:PORT` with a port from 1 to 65535.
pub fn check_address(address: &str) -> Result<(), BadAddress> {
    let bad = || BadAddress {
        address: address.to_string(),
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad()),
    }
}

/// A channel that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Address(#[from] BadAddress),
    #[error("TLS settings for {address}: {message}")]
    Tls { address: String, message: String },
}

/// A plaintext channel to `address` that connects on first use and
/// reconnects by itself after a failure. For tests and tools; the roles
/// dial with [`channel`], which honours their TLS settings.
pub fn lazy_channel(address: &str) -> Result<Channel, BadAddress> {
    match channel(address, None) {
        Ok(c) => Ok(c),
        Err(ChannelError::Address(e)) => Err(e),
        Err(ChannelError::Tls { address, .. }) => Err(BadAddress { address }),
    }
}

/// A channel to `address`, over TLS when `tls` is given (the peer's
/// certificate must name the host of `address`), connecting on first use
/// and reconnecting by itself after a failure.
pub fn channel(address: &str, tls: Option<&Tls>) -> Result<Channel, ChannelError> {
    check_address(address)?;
    let bad = || BadAddress {
        address: address.to_string(),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|_| bad())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        let host = address.rsplit_once(':').map(|(h, _)| h).ok_or_else(bad)?;
        endpoint = endpoint
            .tls_config(tls.client_config(host))
            .map_err(|e| ChannelError::Tls {
                address: address.to_string(),
                message: e.to_string(),
            })?;
    }
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(check_address("127.0.0.1:7001").is_ok());
        assert!(check_address("db-1.example:7001").is_ok());
        assert!(check_address("[::1]:7001").is_ok());
        assert!(check_address("127.0.0.1").is_err());
        assert!(check_address("127.0.0.1:0").is_err());
        assert!(check_address(":7001").is_err());
        assert!(check_address("host:99999").is_err());
    }
}
