//! Gatehouse's typed configuration: the TOML schema, its defaults and its validation.
//!
//! [`Config::from_toml`] parses a document, deserializes every section on its own (so one bad
//! section does not hide the problems of the next), then runs the semantic checks of
//! `validate.rs`. Every problem is reported with its key path and a reason, e.g.
//! `apps[1].instances[0].address: "10.0.0.1:80" is not an IP address (...)`.
//!
//! This crate has no side effects: it reads no file but the one it is given (certificate and
//! key paths are checked for existence only), binds no socket and creates nothing.
//! Other crates take their own section, never the whole `Config`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acme;
mod admin;
mod admission;
mod apps;
mod cluster;
mod ct;
mod de;
mod error;
mod http;
mod proxy;
mod store;
mod tee;
mod tls;
mod validate;
mod vpc;

pub use acme::{
    AcmeConfig, CloudflareConfig, DnsConfig, DnsProviderKind, KeyType, OnDemandConfig,
    Rfc2136Config,
};
pub use admin::{AdminConfig, AdminToken, Scope};
pub use admission::AdmissionConfig;
pub use apps::{
    app_id_problem, check_app, related_ids, AppConfig, AppMode, InstanceConfig,
    ProxyProtocolVersion, Reach, ATTESTATION_LABEL,
};
pub use cluster::ClusterConfig;
pub use ct::{CtConfig, CtSourceKind};
pub use de::parse_ip_net;
pub use error::{ConfigError, Problem};
pub use http::{ChannelConfig, ForwardedMode, HealthCheckConfig, HealthProtocol, HttpConfig};
pub use proxy::{parse_dot_server, ConnectionLimits, CustomDomainsConfig, ProxyConfig, Timeouts};
pub use store::{EtcdStoreConfig, StoreBackend, StoreConfig};
pub use tee::{Sealing, SimulatorSettings, TeeConfig, TeeProvider};
pub use tls::{CertificatePair, TlsConfig};
pub use validate::{dns_name_problem, is_local_address};
pub use vpc::{Ipv4Prefix, VpcApp, VpcConfig, WireGuardKind};

use serde::de::DeserializeOwned;
use std::path::Path;

/// The whole configuration of one gateway process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[proxy]`: listeners, base domains, timeouts, custom-domain resolution.
    pub proxy: ProxyConfig,
    /// `[[apps]]`: statically configured apps and their instances.
    pub apps: Vec<AppConfig>,
    /// `[tls]`: static certificates for the terminating path.
    pub tls: TlsConfig,
    /// `[admin]`: the admin/metrics listener, absent when not configured.
    pub admin: Option<AdminConfig>,
    /// `[acme]`: certificates from an ACME CA, absent when not configured.
    pub acme: Option<AcmeConfig>,
    /// `[dns]`: the DNS provider for challenges and CAA, absent when not configured.
    pub dns: Option<DnsConfig>,
    /// `[store]`: where state lives.
    pub store: StoreConfig,
    /// `[tee]`: the quote source and the sealer.
    pub tee: TeeConfig,
    /// `[vpc]`: the WireGuard network to app CVMs, absent when not configured.
    pub vpc: Option<VpcConfig>,
    /// `[cluster]`: joining the other nodes (etcd backend).
    pub cluster: ClusterConfig,
    /// `[admission]`: who admits apps and app CVMs, absent when every app is admitted.
    pub admission: Option<AdmissionConfig>,
    /// `[ct]`: the Certificate Transparency watch, absent when nothing is watched.
    pub ct: Option<CtConfig>,
}

/// Top-level sections this build understands, in the order they are documented.
const SECTIONS: &[&str] = &[
    "proxy",
    "apps",
    "tls",
    "acme",
    "dns",
    "store",
    "cluster",
    "tee",
    "vpc",
    "admin",
    "admission",
    "ct",
];

impl Config {
    /// Reads and validates a config file. `base_dir` for relative certificate paths is the
    /// file's directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base)
    }

    /// Parses and validates a TOML document; relative file paths are taken from `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            message: e.message().to_owned(),
            span: e.span(),
        })?;
        let mut problems = Vec::new();
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(Problem::new(
                    key,
                    format!(
                        "unknown section (this build knows: {})",
                        SECTIONS.join(", ")
                    ),
                ));
            }
        }
        let mut proxy: Option<ProxyConfig> = section(&table, "proxy", &mut problems);
        let mut tls: Option<TlsConfig> = section(&table, "tls", &mut problems);
        let mut admin: Option<Option<AdminConfig>> = optional(&table, "admin", &mut problems);
        let mut acme: Option<Option<AcmeConfig>> = optional(&table, "acme", &mut problems);
        let mut dns: Option<Option<DnsConfig>> = optional(&table, "dns", &mut problems);
        let mut store: Option<StoreConfig> = section(&table, "store", &mut problems);
        let mut tee: Option<TeeConfig> = section(&table, "tee", &mut problems);
        // `provider = "none"` has no TEE to seal with: unless told otherwise, it seals with
        // the development key (announced at every start), so one setting makes a plain router.
        let sealing_given = table.get("tee").and_then(|t| t.get("sealing")).is_some();
        if let Some(t) = tee.as_mut().filter(|t| t.provider == TeeProvider::None) {
            if !sealing_given {
                t.sealing = Sealing::Development;
            }
        }
        let mut cluster: Option<ClusterConfig> = section(&table, "cluster", &mut problems);
        if let Some(c) = &mut cluster {
            c.resolve_paths(base_dir);
            c.check(&mut problems);
        }
        let mut vpc: Option<Option<VpcConfig>> = optional(&table, "vpc", &mut problems);
        let mut admission: Option<Option<AdmissionConfig>> =
            optional(&table, "admission", &mut problems);
        if let Some(Some(a)) = &mut admission {
            a.resolve_paths(base_dir);
            a.check(&mut problems);
        }
        let mut ct: Option<Option<CtConfig>> = optional(&table, "ct", &mut problems);
        if let Some(Some(c)) = &mut ct {
            c.resolve_paths(base_dir);
            c.check(&mut problems);
        }
        let (mut apps, apps_complete) = apps::decode_all(table.get("apps"), &mut problems);

        // Check whatever decoded, so one bad section does not hide the problems of another.
        if let Some(ca) = proxy
            .as_mut()
            .and_then(|p| p.custom_domains.dns_tls_ca_file.as_mut())
        {
            *ca = base_dir.join(&*ca);
        }
        if let Some(tls) = &mut tls {
            tls.resolve_paths(base_dir);
        }
        if let Some(Some(admin)) = &mut admin {
            admin.resolve_paths(base_dir);
        }
        if let Some(Some(a)) = &mut acme {
            a.resolve_paths(base_dir);
        }
        if let Some(Some(d)) = &mut dns {
            d.resolve_paths(base_dir);
        }
        if let Some(s) = &mut store {
            s.resolve_paths(base_dir);
        }
        if let Some(t) = &mut tee {
            t.resolve_paths(base_dir);
            t.check(&mut problems);
        }
        if let Some(Some(v)) = &mut vpc {
            v.resolve_paths(base_dir);
            let ids: Vec<&str> = apps.iter().map(|(_, a)| a.id.as_str()).collect();
            v.check(&ids, &mut problems);
            if tee
                .as_ref()
                .is_some_and(|t| t.provider == TeeProvider::None)
            {
                problems.push(Problem::new(
                    "vpc",
                    "needs attestation: app CVMs only register with an attested gateway \
                     (tee.provider = \"none\")",
                ));
            }
        }
        let on_demand = matches!(&acme, Some(Some(a)) if a.on_demand.enabled);
        if on_demand && matches!(admission, Some(None)) {
            problems.push(Problem::new(
                "acme.on_demand.enabled",
                "needs [admission] (a webhook or an allow list) to decide which domains get \
                 certificates: anyone can point a TXT record at an app",
            ));
        }
        if on_demand && matches!(admin, Some(None)) {
            problems.push(Problem::new(
                "acme.on_demand.enabled",
                "needs [admin]: the control plane keeps the domains it orders",
            ));
        }
        let etcd = store
            .as_ref()
            .is_some_and(|s| s.backend == StoreBackend::Etcd);
        if etcd
            && tee
                .as_ref()
                .is_some_and(|t| t.provider == TeeProvider::None)
        {
            problems.push(Problem::new(
                "store.backend",
                "etcd needs attestation: nodes join the cluster by mutual RA-TLS and get the \
                 cluster sealing key only then (tee.provider = \"none\")",
            ));
        }
        validate::check(
            validate::Parts {
                proxy: proxy.as_ref(),
                apps: &apps,
                tls: tls.as_ref(),
                admin: admin.as_ref().and_then(|a| a.as_ref()),
                acme: acme.as_ref().and_then(|a| a.as_ref()),
                dns: dns.as_ref().and_then(|d| d.as_ref()),
                store: store.as_ref(),
            },
            &mut problems,
        );
        match (
            proxy.take(),
            tls.take(),
            admin.take(),
            acme.take(),
            dns.take(),
            store.take(),
            tee.take(),
            vpc.take(),
            cluster.take(),
            admission.take(),
            ct.take(),
        ) {
            (
                Some(mut proxy),
                Some(tls),
                Some(admin),
                Some(acme),
                Some(dns),
                Some(store),
                Some(tee),
                Some(vpc),
                Some(cluster),
                Some(admission),
                Some(ct),
            ) if problems.is_empty() && apps_complete => {
                proxy.normalize();
                Ok(Config {
                    proxy,
                    apps: apps.drain(..).map(|(_, a)| a).collect(),
                    tls,
                    admin,
                    acme,
                    dns,
                    store,
                    tee,
                    vpc,
                    cluster,
                    admission,
                    ct,
                })
            }
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

/// Deserializes the optional section `key` (absent = its defaults), recording a problem on error.
fn section<T: DeserializeOwned + Default>(
    table: &toml::Table,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match table.get(key) {
        None => Some(T::default()),
        Some(v) => decode(v.clone(), key, problems),
    }
}

/// Deserializes the optional section `key` (absent = `None`), recording a problem on error.
fn optional<T: DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<Option<T>> {
    match table.get(key) {
        None => Some(None),
        Some(v) => decode(v.clone(), key, problems).map(Some),
    }
}

/// Deserializes one value, turning a serde error into a problem with the full key path.
pub(crate) fn decode<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_owned()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            problems.push(Problem::new(full, e.into_inner().message().to_owned()));
            None
        }
    }
}

#[cfg(test)]
mod tests;
