//! `[vpc]`: the WireGuard network between the gateway and the app CVMs, the registration
//! listener, and which app ids may register under which attestation policy.
//!
//! ```toml
//! [vpc]
//! prefix = "10.88.0.0/16"            # addresses handed to instances (IPv4)
//! gateway_address = "10.88.0.1"      # the gateway's own address in it
//! listen_port = 51820                # WireGuard (UDP)
//! endpoint = "203.0.113.5:51820"     # what agents dial; default: the registration host + listen_port
//! interface = "gatehouse0"
//! kind = "userspace"                 # "kernel" (netlink via `wg`) or "userspace" (UAPI socket)
//! handshake_stale = "3m"             # older last handshake: out of rotation
//! lease_reclaim = "1h"               # no handshake for this long: address given back
//! register_listen = "0.0.0.0:8444"   # RA-TLS registration RPC
//! domain = "vpc.internal"            # names answered on gateway_address:53
//! [vpc.apps.shop]
//! policy = "shop-policy.toml"        # the attestation policy a `shop` instance must meet
//! reach = ["db"]                     # apps whose instances a `shop` instance may reach
//! ```

use crate::Problem;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[vpc]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcConfig {
    /// The instance address pool.
    pub prefix: Ipv4Prefix,
    /// The gateway's address in the prefix.
    pub gateway_address: Ipv4Addr,
    /// WireGuard UDP port.
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// The endpoint agents dial (default: the host they registered with, `listen_port`).
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
    /// The interface name (≤ 15 characters).
    #[serde(default = "default_interface")]
    pub interface: String,
    /// How the interface is driven.
    #[serde(default)]
    pub kind: WireGuardKind,
    /// A peer whose last handshake is older is out of rotation.
    #[serde(default = "default_stale", with = "humantime_serde")]
    pub handshake_stale: Duration,
    /// A lease whose peer has had no handshake for this long is reclaimed.
    #[serde(default = "default_reclaim", with = "humantime_serde")]
    pub lease_reclaim: Duration,
    /// The RA-TLS registration listener.
    pub register_listen: SocketAddr,
    /// App ids that may register, with their policies.
    #[serde(default)]
    pub apps: BTreeMap<String, VpcApp>,
    /// The DNS domain of instance names (`<app>.<domain>`, `<n>.<app>.<domain>`).
    #[serde(default = "default_domain")]
    pub domain: String,
    /// The port of the name server on `gateway_address` (inside the VPC only).
    #[serde(default = "default_dns_port")]
    pub dns_port: u16,
    /// The port of the coordinator (netmaps for agents, whois) on `gateway_address`.
    #[serde(default = "default_coordinator_port")]
    pub coordinator_port: u16,
}

/// `[vpc.apps.<id>]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcApp {
    /// The attestation policy file (see the attest crate's `Policy`).
    pub policy: PathBuf,
    /// Other apps whose instances this app's instances may reach over the VPC (instances
    /// of one app always reach each other). WireGuard peering is symmetric, so a pair that
    /// may talk is a pair of peers both ways; names answer only in the direction allowed.
    #[serde(default)]
    pub reach: Vec<String>,
}

/// `[vpc] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WireGuardKind {
    /// The kernel module, configured with the `wg` tool.
    Kernel,
    /// A userspace daemon (wireguard-go, boringtun) through its UAPI socket.
    #[default]
    Userspace,
}

fn default_port() -> u16 {
    51820
}
fn default_domain() -> String {
    "vpc.internal".into()
}
fn default_dns_port() -> u16 {
    53
}
fn default_coordinator_port() -> u16 {
    51821
}
fn default_interface() -> String {
    "gatehouse0".into()
}
fn default_stale() -> Duration {
    Duration::from_secs(180)
}
fn default_reclaim() -> Duration {
    Duration::from_secs(3600)
}

/// An IPv4 prefix `a.b.c.d/n` with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Prefix {
    /// The network address.
    pub network: Ipv4Addr,
    /// The prefix length (8-30).
    pub len: u8,
}

impl Ipv4Prefix {
    fn mask(self) -> u32 {
        u32::MAX << (32 - self.len)
    }

    /// Whether `ip` is in the prefix.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The usable host addresses (network and broadcast excluded), in order.
    pub fn hosts(self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 1;
        let last = u32::from(self.network) | !self.mask();
        (first..last).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl std::str::FromStr for Ipv4Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Ipv4Prefix, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a.b.c.d/len"))?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        if !(8..=30).contains(&len) {
            return Err(format!("prefix length {len} is outside 8-30"));
        }
        let p = Ipv4Prefix { network, len };
        if u32::from(network) & !p.mask() != 0 {
            return Err(format!("{s} has host bits set"));
        }
        Ok(p)
    }
}

impl<'de> Deserialize<'de> for Ipv4Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ipv4Prefix, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl VpcConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for app in self.apps.values_mut() {
            app.policy = base.join(&app.policy);
        }
    }

    /// Checks the section alone and against the `[[apps]]` ids.
    pub(crate) fn check(&self, app_ids: &[&str], problems: &mut Vec<Problem>) {
        let mut push = |k: &str, r: String| problems.push(Problem::new(format!("vpc.{k}"), r));
        let gw = self.gateway_address;
        if !self.prefix.contains(gw) || !self.prefix.hosts().any(|h| h == gw) {
            push(
                "gateway_address",
                format!("{gw} is not a host address in {}", self.prefix),
            );
        }
        let name_ok = (1..=15).contains(&self.interface.len())
            && self
                .interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_=+.-".contains(&b));
        if !name_ok {
            push(
                "interface",
                format!("{:?} must be 1-15 of A-Z a-z 0-9 _ = + . -", self.interface),
            );
        }
        if self.handshake_stale.is_zero() {
            push("handshake_stale", "must be more than 0s".into());
        }
        if self.lease_reclaim < self.handshake_stale {
            push(
                "lease_reclaim",
                format!(
                    "{} is less than handshake_stale {}",
                    humantime::format_duration(self.lease_reclaim),
                    humantime::format_duration(self.handshake_stale)
                ),
            );
        }
        for (id, app) in &self.apps {
            if !app_ids.contains(&id.as_str()) {
                push(
                    &format!("apps.{id}"),
                    format!(
                        "no [[apps]] entry has id {id:?}: declare the app, its mode and port there"
                    ),
                );
            }
            if !app.policy.is_file() {
                push(
                    &format!("apps.{id}.policy"),
                    format!("{} is not a readable file", app.policy.display()),
                );
            }
            for (i, other) in app.reach.iter().enumerate() {
                if !self.apps.contains_key(other) {
                    push(
                        &format!("apps.{id}.reach[{i}]"),
                        format!("{other:?} is not a [vpc.apps] entry: nothing of it joins the VPC"),
                    );
                }
            }
        }
        if let Some(problem) = crate::dns_name_problem(&self.domain) {
            push("domain", problem);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_strictly() {
        let p: Ipv4Prefix = "10.88.0.0/16".parse().unwrap();
        assert!(p.contains("10.88.255.254".parse().unwrap()));
        assert!(!p.contains("10.89.0.1".parse().unwrap()));
        let small: Ipv4Prefix = "10.0.0.0/30".parse().unwrap();
        let hosts: Vec<_> = small.hosts().map(|h| h.to_string()).collect();
        assert_eq!(hosts, ["10.0.0.1", "10.0.0.2"]);
        assert!("10.88.0.1/16"
            .parse::<Ipv4Prefix>()
            .unwrap_err()
            .contains("host bits"));
        assert!("10.0.0.0/31".parse::<Ipv4Prefix>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Prefix>().is_err());
        assert!("fd00::/64".parse::<Ipv4Prefix>().is_err());
    }
}
