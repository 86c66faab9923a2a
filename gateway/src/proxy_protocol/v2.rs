//! PROXY v2: 12-byte signature, version/command, family/protocol, length, addresses, TLVs.

use super::{same_family, ProxyHeader, ProxyHeaderError};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

pub(super) const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const HEADER: usize = 16;
/// Addresses (at most 216 bytes for AF_UNIX) plus TLVs from cloud load balancers fit easily;
/// beyond this a client could make us buffer 64 KiB before the hello.
const MAX_PAYLOAD: usize = 4096;

fn bad(reason: &'static str) -> ProxyHeaderError {
    ProxyHeaderError::Malformed { version: 2, reason }
}

pub(super) fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    let Some(head) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let (ver, cmd) = (head[12] >> 4, head[12] & 0x0f);
    if ver != 2 {
        return Err(bad("version is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_PAYLOAD {
        return Err(bad("longer than 4096 bytes"));
    }
    let Some(payload) = buf.get(HEADER..HEADER + len) else {
        return Ok(None);
    };
    let total = HEADER + len;
    let addrs = match cmd {
        0x0 => None, // LOCAL: the balancer's own connection (health check)
        0x1 => addresses(head[13], payload)?,
        _ => return Err(bad("command is not LOCAL or PROXY")),
    };
    let used = match head[13] >> 4 {
        0x1 => 12,
        0x2 => 36,
        0x3 => 216,
        _ => 0,
    };
    if let Some(tlvs) = payload.get(used..) {
        check_tlvs(tlvs)?;
    }
    Ok(Some((ProxyHeader { addrs }, total)))
}

fn addresses(fam: u8, p: &[u8]) -> Result<Option<(SocketAddr, SocketAddr)>, ProxyHeaderError> {
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match fam {
        0x00 => Ok(None), // UNSPEC
        0x11 => {
            let a = p.get(..12).ok_or(bad("TCP4 addresses truncated"))?;
            let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some((
                SocketAddr::from((ip(&a[0..4]), port(&a[8..10]))),
                SocketAddr::from((ip(&a[4..8]), port(&a[10..12]))),
            )))
        }
        0x21 => {
            let a = p.get(..36).ok_or(bad("TCP6 addresses truncated"))?;
            let ip = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap_or_default());
            Ok(Some((
                SocketAddr::from((ip(&a[0..16]), port(&a[32..34]))),
                SocketAddr::from((ip(&a[16..32]), port(&a[34..36]))),
            )))
        }
        _ => Err(bad("family/protocol is not TCP4, TCP6 or UNSPEC")),
    }
}

fn check_tlvs(mut rest: &[u8]) -> Result<(), ProxyHeaderError> {
    while !rest.is_empty() {
        let Some(h) = rest.get(..3) else {
            return Err(bad("TLV header truncated"));
        };
        let n = 3 + usize::from(u16::from_be_bytes([h[1], h[2]]));
        rest = rest.get(n..).ok_or(bad("TLV value overruns the header"))?;
    }
    Ok(())
}

pub(super) fn encode(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (c, l) = same_family(client, local);
    let mut out = SIGNATURE.to_vec();
    out.push(0x21); // v2, PROXY
    match (c, l) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            out.extend([0x11, 0, 12]);
            out.extend(c.ip().octets());
            out.extend(l.ip().octets());
        }
        (c, l) => {
            let six = |s: SocketAddr| match s {
                SocketAddr::V6(v) => v.ip().octets(),
                SocketAddr::V4(v) => v.ip().to_ipv6_mapped().octets(),
            };
            out.extend([0x21, 0, 36]);
            out.extend(six(c));
            out.extend(six(l));
        }
    }
    out.extend(c.port().to_be_bytes());
    out.extend(l.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ver_cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend([ver_cmd, fam]);
        v.extend((payload.len() as u16).to_be_bytes());
        v.extend(payload);
        v
    }

    #[test]
    fn table() {
        let tcp4 = [192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 1, 0xbb];
        let (h, n) = parse(&header(0x21, 0x11, &tcp4)).unwrap().unwrap();
        assert_eq!(n, 28);
        assert_eq!(h.addrs.unwrap().0, "192.0.2.1:56324".parse().unwrap());
        let mut with_tlv = tcp4.to_vec();
        with_tlv.extend([0x04, 0, 2, b'a', b'b']);
        assert!(parse(&header(0x21, 0x11, &with_tlv)).unwrap().is_some());
        assert_eq!(
            parse(&header(0x20, 0x00, &[])).unwrap().unwrap().0.addrs,
            None
        );
        assert_eq!(
            parse(&header(0x20, 0x11, &tcp4)).unwrap().unwrap().0.addrs,
            None
        );
        let cases: &[(Vec<u8>, &str)] = &[
            (header(0x11, 0x11, &tcp4), "version is not 2"),
            (header(0x22, 0x11, &tcp4), "command is not LOCAL or PROXY"),
            (
                header(0x21, 0x12, &tcp4),
                "family/protocol is not TCP4, TCP6 or UNSPEC",
            ),
            (header(0x21, 0x11, &tcp4[..8]), "TCP4 addresses truncated"),
            (header(0x21, 0x21, &tcp4), "TCP6 addresses truncated"),
            (
                header(0x21, 0x11, &[&tcp4[..], &[4, 0, 9, 1]].concat()),
                "TLV value overruns the header",
            ),
            (
                header(0x21, 0x11, &[&tcp4[..], &[4, 0]].concat()),
                "TLV header truncated",
            ),
        ];
        for (bytes, reason) in cases {
            assert_eq!(parse(bytes), Err(bad(reason)), "{reason}");
        }
        let mut huge = SIGNATURE.to_vec();
        huge.extend([0x21, 0x11, 0x20, 0x00]);
        assert_eq!(parse(&huge), Err(bad("longer than 4096 bytes")));
    }
}
