//! Starts the Certificate Transparency watch that `[ct]` asks for (crate `gatehouse-ct`):
//! its sources, the domains it watches, the keys the gateway serves put on the allowlist
//! (keys it holds are ours, whichever way they came), the loop on the control runtime. Its
//! status reaches `/metrics` and the attestation claims through [`Metrics::ct`].
//!
//! [`Metrics::ct`]: crate::metrics::Metrics::ct

use crate::app::StartError;
use crate::conn::Shared;
use gatehouse_config::{Config, CtSourceKind};
use gatehouse_ct::{allowlist, CtSource, Monitor, MonitorConfig};
use gatehouse_store::Store;
use std::sync::Arc;

fn fail(e: impl std::fmt::Display) -> StartError {
    StartError::Ct(e.to_string())
}

/// The watched domains: `[ct] domains`, else the base domains and `[acme] domains`.
pub fn domains(config: &Config) -> Vec<String> {
    match &config.ct {
        Some(ct) if !ct.domains.is_empty() => ct.domains.clone(),
        _ => {
            let mut d = config.proxy.base_domains.clone();
            if let Some(acme) = &config.acme {
                d.extend(acme.domains.iter().cloned());
            }
            d
        }
    }
}

/// Starts the watch if `[ct]` is configured; `store` holds its cursors, alerts and allowlist.
pub async fn start(
    config: &Config,
    store: Arc<dyn Store>,
    shared: &Shared,
) -> Result<Option<Arc<Monitor>>, StartError> {
    let Some(ct) = &config.ct else {
        return Ok(None);
    };
    let mut sources: Vec<Arc<dyn CtSource>> = Vec::new();
    for kind in &ct.sources {
        sources.push(match kind {
            CtSourceKind::Certspotter => {
                let key = match &ct.certspotter_key_file {
                    Some(path) => Some(
                        std::fs::read_to_string(path)
                            .map_err(|e| {
                                fail(format!("ct.certspotter_key_file {}: {e}", path.display()))
                            })?
                            .trim()
                            .to_owned(),
                    ),
                    None => None,
                };
                Arc::new(
                    gatehouse_ct::certspotter::CertSpotter::new(&ct.certspotter_url, key)
                        .map_err(fail)?,
                )
            }
            CtSourceKind::Crtsh => {
                Arc::new(gatehouse_ct::crtsh::CrtSh::new(&ct.crtsh_url).map_err(fail)?)
            }
        });
    }
    let now = gatehouse_attest::unix_now();
    for (leaf, _) in shared.tls.resolver.leaves() {
        let spki = gatehouse_attest::bundle::cert_spki_sha256(&leaf).map_err(fail)?;
        allowlist::record(store.as_ref(), &spki, allowlist::Why::Served, now)
            .await
            .map_err(fail)?;
    }
    let watched = domains(config);
    let monitor = Arc::new(
        Monitor::new(
            sources,
            store,
            MonitorConfig {
                domains: watched.clone(),
                interval: ct.interval,
                stale_after: ct.stale_after,
                webhook: ct.webhook.clone(),
            },
        )
        .await
        .map_err(fail)?,
    );
    let _ = shared.metrics.ct.set(monitor.clone());
    tracing::info!(
        domains = ?watched,
        sources = ?ct.sources,
        interval = ?ct.interval,
        "CT watch on"
    );
    tokio::spawn(monitor.clone().run());
    Ok(Some(monitor))
}
