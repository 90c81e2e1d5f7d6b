//! gRPC client connections, one place for every dialer (managers to each
//! other, agents and the CLI to managers): address checks, timeouts and
//! keep-alives are the same everywhere.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

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

/// A channel to `address` that connects on first use and reconnects by
/// itself after a failure.
pub fn lazy_channel(address: &str) -> Result<Channel, BadAddress> {
    check_address(address)?;
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|_| BadAddress {
            address: address.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
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
