//! `[store]`: where state lives. `embedded` (a redb file in the state directory) for one node;
//! `etcd` (`[store.etcd]`) for a cluster of nodes sharing one state.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[store]`: where the ACME account, sealed keys, certificates and leases live.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (default) or `etcd`.
    #[serde(default)]
    pub backend: StoreBackend,
    /// The state directory; default: `run --state-dir`. With etcd it still holds the node's
    /// own files (the sealing key of a development node, the dev CA).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `[store.etcd]`: the cluster, when `backend = "etcd"`.
    #[serde(default)]
    pub etcd: Option<EtcdStoreConfig>,
}

/// Which backend holds the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// A redb file on this node.
    #[default]
    Embedded,
    /// An etcd cluster shared by the gateway nodes.
    Etcd,
}

/// `[store.etcd]`: the members' client URLs and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdStoreConfig {
    /// Client URLs of the members: `https://10.0.0.5:2379`; `http://` only on loopback.
    pub endpoints: Vec<String>,
    /// Prepended to every key, ending with `/` (one etcd can hold several clusters).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The CA of etcd's server certificates (PEM); required for `https://` endpoints.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This node's client certificate (PEM), for etcd's `--client-cert-auth`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The deadline of each call; past it the node serves what it holds (fail static).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            path: None,
            etcd: None,
        }
    }
}

fn default_prefix() -> String {
    "gatehouse/".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl StoreConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.path {
            *p = base.join(&*p);
        }
        if let Some(e) = &mut self.etcd {
            for p in [&mut e.ca_file, &mut e.cert_file, &mut e.key_file]
                .into_iter()
                .flatten()
            {
                *p = base.join(&*p);
            }
        }
    }

    /// Every problem, as (key path, message).
    pub(crate) fn check(&self, push: &mut impl FnMut(String, String)) {
        let etcd = match (self.backend, &self.etcd) {
            (StoreBackend::Embedded, Some(_)) => {
                return push(
                    "store.etcd".into(),
                    "set backend = \"etcd\" to use it (the store is embedded)".into(),
                )
            }
            (StoreBackend::Embedded, None) => return,
            (StoreBackend::Etcd, None) => {
                return push(
                    "store.etcd".into(),
                    "required when backend = \"etcd\" (endpoints, and ca_file for https)".into(),
                )
            }
            (StoreBackend::Etcd, Some(e)) => e,
        };
        if etcd.endpoints.is_empty() {
            push(
                "store.etcd.endpoints".into(),
                "lists no member: give each member's client URL".into(),
            );
        }
        for (i, url) in etcd.endpoints.iter().enumerate() {
            if let Err(why) = check_endpoint(url, etcd.ca_file.is_some()) {
                push(
                    format!("store.etcd.endpoints[{i}]"),
                    format!("{url:?} {why}"),
                );
            }
        }
        if !etcd.prefix.ends_with('/') || etcd.prefix.starts_with('/') || etcd.prefix.len() < 2 {
            push(
                "store.etcd.prefix".into(),
                format!(
                    "{:?} must end with '/' and not start with one (\"gatehouse/\")",
                    etcd.prefix
                ),
            );
        }
        if etcd.cert_file.is_some() != etcd.key_file.is_some() {
            push(
                "store.etcd.cert_file".into(),
                "cert_file and key_file go together".into(),
            );
        }
        if etcd.timeout.is_zero() {
            push("store.etcd.timeout".into(), "must be more than 0".into());
        }
    }
}

/// `http://` only to loopback (a path to etcd across a network must be authenticated: state
/// that is not secret, such as routes and leases, could otherwise be forged on the way).
fn check_endpoint(url: &str, have_ca: bool) -> Result<(), &'static str> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("is not a URL (https://host:port)")?;
    let host = rest
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or("needs host:port")?;
    match scheme {
        "https" if have_ca => Ok(()),
        "https" => Err("needs store.etcd.ca_file (the CA of etcd's certificates)"),
        "http" => {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err("is plain http to another host: use https with ca_file")
            }
        }
        _ => Err("must be http:// (loopback) or https://"),
    }
}
