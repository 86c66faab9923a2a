//! PROXY v1: `PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\r\n`, at most 107 bytes.

use super::{same_family, ProxyHeader, ProxyHeaderError};
use std::net::{IpAddr, SocketAddr};

pub(super) const SIGNATURE: &[u8] = b"PROXY ";
const MAX_LEN: usize = 107;

fn bad(reason: &'static str) -> ProxyHeaderError {
    ProxyHeaderError::Malformed { version: 1, reason }
}

pub(super) fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    let window = &buf[..buf.len().min(MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_LEN {
            Err(bad("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[SIGNATURE.len()..end]).map_err(|_| bad("not ASCII"))?;
    let mut parts = line.split(' ');
    let family = parts.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The rest is to be ignored (spec 2.1), but must still be printable.
        return Ok(Some((ProxyHeader { addrs: None }, end + 2)));
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(bad(
            "expected 4 fields after the protocol, separated by single spaces",
        ));
    };
    let ip = |s: &str| {
        s.parse::<IpAddr>()
            .map_err(|_| bad("address does not parse"))
    };
    let (src, dst) = (ip(src)?, ip(dst)?);
    let want_v4 = match family {
        "TCP4" => true,
        "TCP6" => false,
        _ => return Err(bad("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    if src.is_ipv4() != want_v4 || dst.is_ipv4() != want_v4 {
        return Err(bad("address family differs from the protocol"));
    }
    let addrs = (
        SocketAddr::new(src, port(sport)?),
        SocketAddr::new(dst, port(dport)?),
    );
    Ok(Some((ProxyHeader { addrs: Some(addrs) }, end + 2)))
}

fn port(s: &str) -> Result<u16, ProxyHeaderError> {
    let p: u16 = s.parse().map_err(|_| bad("port is not 0-65535"))?;
    if p.to_string() != s {
        return Err(bad("port has leading zeros or a sign"));
    }
    Ok(p)
}

pub(super) fn encode(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (c, l) = same_family(client, local);
    let family = if c.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        c.ip(),
        l.ip(),
        c.port(),
        l.port()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = |s: &str| parse(s.as_bytes()).unwrap().unwrap();
        let (h, n) = ok("PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nrest");
        assert_eq!(n, 45);
        assert_eq!(h.addrs.unwrap().0, "192.0.2.1:56324".parse().unwrap());
        assert_eq!(ok("PROXY UNKNOWN\r\n").0.addrs, None);
        assert_eq!(ok("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").0.addrs, None);
        for bad_line in [
            "PROXY TCP4 192.0.2.1 198.51.100.7 56324  443\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.7 056324 443\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.7 65536 443\r\n",
            "PROXY TCP4 ::1 198.51.100.7 1 443\r\n",
            "PROXY TCP6 192.0.2.1 198.51.100.7 1 443\r\n",
            "PROXY UDP4 192.0.2.1 198.51.100.7 1 443\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n",
            "PROXY TCP4 192.0.2.x 198.51.100.7 1 443\r\n",
        ] {
            assert!(parse(bad_line.as_bytes()).is_err(), "{bad_line:?}");
        }
        assert_eq!(parse(b"PROXY TCP4 1.1.1.1"), Ok(None));
        let long = format!("PROXY {}", "x".repeat(120));
        assert_eq!(parse(long.as_bytes()), Err(bad("no CRLF within 107 bytes")));
    }
}
