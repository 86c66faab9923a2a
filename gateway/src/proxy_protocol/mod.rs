//! PROXY protocol v1 and v2 (haproxy.org/download/2.9/doc/proxy-protocol.txt).
//!
//! Inbound: a strict incremental parser ("done", "need more", "reject") over the same buffer
//! that then holds the ClientHello, so the header and the hello may arrive in one read.
//! Outbound: the header sent to an instance before any client byte.
//!
//! Written here rather than taken from a crate because it must share the hello's buffer and its
//! three-way answers, and reject what lenient parsers accept (v1 extra spaces, leading zeros).

mod v1;
mod v2;

use std::net::SocketAddr;

/// Addresses carried by a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client and the address it connected to; `None` for `LOCAL` (v2) and
    /// `UNKNOWN` (v1): a health check from the load balancer itself.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// Why a PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection does not start with a v1 or v2 signature.
    #[error("missing PROXY protocol header")]
    Missing,
    /// The header is malformed; the reason names the field.
    #[error("malformed PROXY v{version} header: {reason}")]
    Malformed {
        /// 1 or 2.
        version: u8,
        /// What is wrong.
        reason: &'static str,
    },
    /// The client closed before the header was complete.
    #[error("connection closed inside the PROXY header")]
    Truncated,
}

/// Parses a header at the start of `buf`: `Ok(Some((header, length)))`, `Ok(None)` when more
/// bytes are needed, or why it is refused.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let n = buf.len().min(v2::SIGNATURE.len());
    if buf[..n] == v2::SIGNATURE[..n] {
        return if n < v2::SIGNATURE.len() {
            Ok(None)
        } else {
            v2::parse(buf)
        };
    }
    let n = buf.len().min(v1::SIGNATURE.len());
    if buf[..n] == v1::SIGNATURE[..n] {
        return if n < v1::SIGNATURE.len() {
            Ok(None)
        } else {
            v1::parse(buf)
        };
    }
    Err(ProxyHeaderError::Missing)
}

/// Encodes a header for an instance.
pub fn encode(
    version: gatehouse_config::ProxyProtocolVersion,
    client: SocketAddr,
    local: SocketAddr,
) -> Vec<u8> {
    match version {
        gatehouse_config::ProxyProtocolVersion::V1 => v1::encode(client, local),
        gatehouse_config::ProxyProtocolVersion::V2 => v2::encode(client, local),
    }
}

/// A v4-mapped v6 address shown as v4, so both ends of a header share one family.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// Both addresses in one family (v4 when both can be, v6 otherwise).
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (a, b) = (unmap(a), unmap(b));
    match (a, b) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) | (SocketAddr::V6(_), SocketAddr::V4(_)) => {
            let six = |s: SocketAddr| match s {
                SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
                v6 => v6,
            };
            (six(a), six(b))
        }
        same => same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::ProxyProtocolVersion::{V1, V2};

    #[test]
    fn round_trips() {
        let pairs: [(SocketAddr, SocketAddr); 3] = [
            (
                "192.0.2.1:56324".parse().unwrap(),
                "198.51.100.7:443".parse().unwrap(),
            ),
            (
                "[2001:db8::1]:1".parse().unwrap(),
                "[2001:db8::2]:65535".parse().unwrap(),
            ),
            (
                "192.0.2.1:5".parse().unwrap(),
                "[2001:db8::2]:6".parse().unwrap(),
            ),
        ];
        for version in [V1, V2] {
            for (c, l) in pairs {
                let mut bytes = encode(version, c, l);
                let n = bytes.len();
                bytes.extend(b"\x16\x03\x01");
                let (h, len) = parse(&bytes).unwrap().unwrap();
                assert_eq!(len, n);
                assert_eq!(h.addrs, Some(same_family(c, l)), "{version:?}");
                for end in 0..n {
                    assert_eq!(parse(&bytes[..end]), Ok(None), "{version:?} prefix {end}");
                }
            }
        }
    }

    #[test]
    fn not_a_header() {
        assert_eq!(parse(b"\x16\x03\x01\x02"), Err(ProxyHeaderError::Missing));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
        assert_eq!(parse(b"PROXZ"), Err(ProxyHeaderError::Missing));
    }
}
