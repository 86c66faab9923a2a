//! The gateway's own listeners (TLS, admin, port-80 redirect, VPC registration) are never
//! instance targets: without this, a name such as `app-8001.<base>` on an app whose instance
//! is the gateway host would reach the admin listener from outside.

use std::net::SocketAddr;
use std::sync::RwLock;

static OWN: RwLock<Vec<SocketAddr>> = RwLock::new(Vec::new());

/// Records a listener's bound address (called once per listener at start).
pub fn register(addr: SocketAddr) {
    OWN.write().unwrap_or_else(|p| p.into_inner()).push(addr);
}

/// Whether connecting to `target` would reach one of our own listeners: the same address,
/// or the same port on a loopback or unspecified address when the listener is bound to all
/// addresses.
pub fn is_own(target: SocketAddr) -> bool {
    let own = OWN.read().unwrap_or_else(|p| p.into_inner());
    own.iter().any(|o| {
        o.port() == target.port()
            && (o.ip() == target.ip()
                || (o.ip().is_unspecified()
                    && (target.ip().is_loopback() || target.ip().is_unspecified())))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hardening_own_listeners_match_by_address_and_wildcard() {
        super::register("127.0.0.1:18001".parse().unwrap());
        super::register("0.0.0.0:18080".parse().unwrap());
        assert!(super::is_own("127.0.0.1:18001".parse().unwrap()));
        assert!(!super::is_own("127.0.0.2:18001".parse().unwrap()));
        assert!(super::is_own("127.0.0.9:18080".parse().unwrap()));
        assert!(!super::is_own("10.88.0.2:18080".parse().unwrap()));
    }
}
