//! Test hosts: the drill's own ([`pgquorum::drill::net`]) — network
//! namespaces on a bridge as root, loopback addresses otherwise — with
//! the names tests use (h1, h2, …) and panics instead of errors.

#![allow(dead_code)]

use std::ops::Deref;

pub use pgquorum::drill::net::Host;

/// Network namespaces for `test`: usable, or a visible skip (a failure in
/// CI, see [`super::root_test_can_run`]).
pub fn usable(test: &str) -> bool {
    super::root_test_can_run(available(), test, "root and iproute2 (network namespaces)")
}

/// Can this process make network namespaces (root, iproute2 present)?
pub fn available() -> bool {
    pgquorum::drill::net::namespaces_available()
}

/// Hosts h1..hn; torn down on drop, even when the test fails.
pub struct Network(pgquorum::drill::net::Network);

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("h{i}")).collect()
}

impl Network {
    /// `n` hosts in network namespaces, on a free private /24.
    pub fn create(n: usize) -> Result<Network, String> {
        pgquorum::drill::net::Network::create(&names(n), None)
            .map(Network)
            .map_err(|e| e.to_string())
    }

    /// `n` hosts on loopback addresses of their own (cannot be cut).
    pub fn loopback(n: usize) -> Network {
        Network(pgquorum::drill::net::Network::loopback(&names(n)))
    }

    pub fn host(&self, name: &str) -> &Host {
        self.0.host(name).expect("known host")
    }

    /// Cut traffic from `from` to `to` (one direction).
    pub fn cut(&self, from: &Host, to: &Host) {
        self.0.cut(from, to).expect("cut link");
    }

    /// Cut `host` off from every other host, both ways.
    pub fn isolate(&self, host: &Host) {
        self.0.isolate(host).expect("isolate host");
    }
}

impl Deref for Network {
    type Target = pgquorum::drill::net::Network;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
