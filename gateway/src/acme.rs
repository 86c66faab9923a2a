//! Wiring ACME into the gateway: the store and sealer, the DNS provider, the certificate
//! targets, and publishing issued certificates on top of the static ones.
//!
//! Stored certificates are published before the listeners accept; the account and orders
//! run in the background, so the data plane never waits for the CA.

use crate::app::StartError;
use crate::conn::Shared;
use crate::terminate::certs::CertResolver;
use gatehouse_caa::lookup::Checker;
use gatehouse_certbot::account::{decode_eab_key, AccountSettings};
use gatehouse_certbot::keys::KeyType;
use gatehouse_certbot::manager::{CaaGate, CaaLock, CertManager, Publish, Target};
use gatehouse_certbot::order::Solver;
use gatehouse_config::{Config, DnsConfig, DnsProviderKind, EtcdStoreConfig, StoreBackend};
use gatehouse_dns::{Cloudflare, DnsProvider, Rfc2136, TsigKey};
use gatehouse_store::{Embedded, Etcd, EtcdOptions, EtcdTls, Sealer, Store};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// ACME ready to run: stored certificates already live.
pub struct Acme {
    manager: Arc<CertManager>,
    settings: AccountSettings,
    targets: Vec<Target>,
}

/// Publishes ACME certificates over the static set.
struct LiveCerts {
    resolver: Arc<CertResolver>,
}

impl Publish for LiveCerts {
    fn publish(&self, certs: Vec<(Vec<String>, Arc<CertifiedKey>)>) {
        self.resolver.set_acme(certs);
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> StartError {
    StartError::Acme(format!("{what}: {e}"))
}

/// The durable state: the store and the sealer protecting the secrets in it.
pub struct State {
    /// Account, certificates.
    pub store: Arc<dyn Store>,
    /// Seals keys before they reach the store.
    pub sealer: Arc<dyn Sealer>,
    /// The state directory.
    pub dir: PathBuf,
}

/// Opens the store `[store]` names (the embedded file in `[store] path`, else in
/// `state_dir`; or the etcd cluster), with the sealer `[tee]` gave.
pub async fn open_state(
    config: &Config,
    state_dir: &Path,
    sealer: Arc<dyn Sealer>,
) -> Result<State, StartError> {
    let dir = config
        .store
        .path
        .clone()
        .unwrap_or_else(|| state_dir.to_owned());
    std::fs::create_dir_all(&dir)
        .map_err(|e| fail(&format!("state directory {}", dir.display()), e))?;
    let store: Arc<dyn Store> = match (&config.store.backend, &config.store.etcd) {
        (StoreBackend::Etcd, Some(etcd)) => {
            let store = Etcd::connect(etcd_options(etcd)?)
                .await
                .map_err(|e| fail("store", e))?;
            tracing::info!(endpoints = ?etcd.endpoints, prefix = %etcd.prefix, "state in etcd");
            Arc::new(store)
        }
        _ => Arc::new(Embedded::open(&dir.join("state.redb")).map_err(|e| fail("store", e))?),
    };
    Ok(State { store, sealer, dir })
}

/// The etcd client settings of `[store.etcd]`, with its PEM files read.
pub fn etcd_options(etcd: &EtcdStoreConfig) -> Result<EtcdOptions, StartError> {
    let read = |what: &str, path: &Path| {
        std::fs::read(path).map_err(|e| fail(&format!("store.etcd.{what} {}", path.display()), e))
    };
    let tls = match &etcd.ca_file {
        Some(ca) => Some(EtcdTls {
            ca_pem: read("ca_file", ca)?,
            identity: match (&etcd.cert_file, &etcd.key_file) {
                (Some(cert), Some(key)) => Some((
                    read("cert_file", cert)?,
                    gatehouse_store::Zeroizing::new(read("key_file", key)?),
                )),
                _ => None,
            },
        }),
        None => None,
    };
    Ok(EtcdOptions {
        endpoints: etcd.endpoints.clone(),
        prefix: etcd.prefix.clone(),
        tls,
        timeout: etcd.timeout,
    })
}

/// The DNS provider `[dns]` describes.
pub fn dns_provider(dns: &DnsConfig) -> Result<Arc<dyn DnsProvider>, StartError> {
    let timeout = Duration::from_secs(10);
    Ok(match dns.provider {
        DnsProviderKind::Rfc2136 => {
            let r = dns
                .rfc2136
                .as_ref()
                .ok_or_else(|| fail("dns", "[dns.rfc2136] missing"))?;
            let secret = std::fs::read_to_string(&r.key_file)
                .map_err(|e| fail(&format!("dns.rfc2136.key_file {}", r.key_file.display()), e))?;
            let key = TsigKey::from_base64(&r.key_name, &r.key_algorithm, &secret)
                .map_err(|e| fail("dns", e))?;
            Arc::new(
                Rfc2136::new(r.server, r.zones.clone(), Some(key), timeout)
                    .map_err(|e| fail("dns", e))?,
            )
        }
        DnsProviderKind::Cloudflare => {
            let c = dns
                .cloudflare
                .as_ref()
                .ok_or_else(|| fail("dns", "[dns.cloudflare] missing"))?;
            let token = std::fs::read_to_string(&c.api_token_file).map_err(|e| {
                fail(
                    &format!(
                        "dns.cloudflare.api_token_file {}",
                        c.api_token_file.display()
                    ),
                    e,
                )
            })?;
            Arc::new(Cloudflare::new(&c.api, &token, timeout).map_err(|e| fail("dns", e))?)
        }
    })
}

/// Builds the manager and targets from `[acme]`/`[dns]`/`[store]`, and publishes the stored
/// certificates. `None` when `[acme]` is absent.
pub async fn prepare(
    config: &Config,
    state: &State,
    shared: &Arc<Shared>,
) -> Result<Option<Acme>, StartError> {
    let Some(acme) = &config.acme else {
        return Ok(None);
    };
    let (store, sealer) = (state.store.clone(), state.sealer.clone());
    let dns = config.dns.as_ref().map(dns_provider).transpose()?;
    let resolvers = config
        .dns
        .as_ref()
        .map(|d| d.resolvers.clone())
        .unwrap_or_default();

    let eab = match (&acme.eab_kid, &acme.eab_hmac_key_file) {
        (Some(kid), Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| fail(&format!("acme.eab_hmac_key_file {}", file.display()), e))?;
            Some((
                kid.clone(),
                decode_eab_key(&text).map_err(|e| fail("acme", e))?,
            ))
        }
        _ => None,
    };
    let settings = AccountSettings {
        directory: acme.directory.clone(),
        contact: acme.contact.clone(),
        ca_file: acme.ca_file.clone(),
        eab,
    };

    if config.store.backend == StoreBackend::Etcd {
        // TLS-ALPN-01 validations may reach any node: every node answers what the renewer
        // publishes in the store.
        shared
            .acme
            .challenges
            .share_through(store.clone(), state.sealer.clone());
        tokio::spawn(shared.acme.challenges.clone().follow());
    }
    let mut targets = Vec::new();
    if acme.base_domains {
        if let (Some(provider), Some(d)) = (&dns, &config.dns) {
            for base in &config.proxy.base_domains {
                let solver = Solver::Dns01 {
                    provider: provider.clone(),
                    authoritative: Some(d.authoritative.clone()),
                    resolvers: resolvers.clone(),
                    timeout: d.propagation_timeout,
                };
                targets.push(Target::new(vec![base.clone(), format!("*.{base}")], solver));
            }
        }
    }
    for domain in &acme.domains {
        let solver = Solver::TlsAlpn01(shared.acme.challenges.clone());
        targets.push(Target::new(vec![domain.to_ascii_lowercase()], solver));
    }

    let caa = if acme.caa_check {
        let timeout = Duration::from_secs(5);
        let servers = match acme.caa_resolvers.as_slice() {
            [] => resolvers.as_slice(),
            s => s,
        };
        let checker = match servers {
            [] => Checker::system(timeout),
            s => Checker::new(s, timeout),
        }
        .map_err(|e| fail("CAA checker", e))?;
        Some(CaaGate {
            checker,
            issuer: acme.caa_issuer.clone(),
            interval: acme.caa_check_interval,
        })
    } else {
        None
    };
    let lock = match (acme.set_caa, &dns) {
        (true, Some(provider)) => Some(CaaLock {
            provider: provider.clone(),
            names: config.proxy.base_domains.clone(),
            issuer: acme.caa_issuer.clone(),
        }),
        _ => None,
    };
    let key_type = match acme.key_type {
        gatehouse_config::KeyType::EcdsaP256 => KeyType::EcdsaP256,
        gatehouse_config::KeyType::EcdsaP384 => KeyType::EcdsaP384,
    };
    let publish = Arc::new(LiveCerts {
        resolver: shared.tls.resolver.clone(),
    });
    let manager = Arc::new(
        CertManager::new(store, sealer, key_type, acme.profile.clone(), caa, publish)
            .with_caa_lock(lock)
            .with_node(gatehouse_cluster::node_name()),
    );
    let served = manager.load_stored(&targets).await;
    tracing::info!(
        targets = targets.len(),
        served,
        "ACME certificates loaded from the store"
    );
    let _ = shared.metrics.acme.set(manager.stats.clone());
    Ok(Some(Acme {
        manager,
        settings,
        targets,
    }))
}

impl Acme {
    /// The certificate manager (renewals, counters).
    pub fn manager(&self) -> Arc<CertManager> {
        self.manager.clone()
    }

    /// Each target's id and names.
    pub fn targets(&self) -> Vec<(String, Vec<String>)> {
        self.targets
            .iter()
            .map(|t| (t.id.clone(), t.names.clone()))
            .collect()
    }

    /// Runs the account and renewal loops on the current runtime.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.manager.run(self.settings, self.targets))
    }
}
