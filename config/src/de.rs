//! Serde helpers whose error messages say what was expected, not just "invalid syntax".

use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, SocketAddr};

pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_socket_addr(&s).map_err(serde::de::Error::custom)
}

pub(crate) fn socket_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.iter()
        .map(|s| parse_socket_addr(s))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

pub(crate) fn ip_addr<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        let hint = if parse_socket_addr(&s).is_ok() {
            " (the port comes from the name `<app>-<port>` or the app's default_port)"
        } else {
            ""
        };
        serde::de::Error::custom(format!("{s:?} is not an IP address{hint}"))
    })
}

/// A list of source ranges: `a.b.c.d/n`, `x::/n`, or a bare address (one host).
pub(crate) fn ip_nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.iter()
        .map(|s| parse_ip_net(s))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

/// Parses `a.b.c.d/n`, `x::/n` or a bare address; host bits must be zero.
pub fn parse_ip_net(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    let net: ipnet::IpNet = s.parse().map_err(|_| {
        format!("{s:?} is not an address or range (expected e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\")")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set: did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        if s.parse::<IpAddr>().is_ok() {
            format!("{s:?} is not a socket address (missing port)")
        } else {
            format!("{s:?} is not a socket address (expected IP:PORT, e.g. \"127.0.0.1:8443\" or \"[::1]:8443\")")
        }
    })
}

pub(crate) fn opt_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}
