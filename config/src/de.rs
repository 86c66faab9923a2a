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
