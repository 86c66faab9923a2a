//! Certificates on demand (`[acme.on_demand]`): the first handshake for a custom domain whose
//! TXT record names an app here, with no certificate yet, asks for one. Three gates stand
//! between a client's SNI and the CA, so a flood of random names never reaches it: the name
//! must route (a TXT record naming an app here; random names do not), `[admission]` must
//! admit the domain for that app, and the rate limits (per app and overall, per hour) must
//! allow one more order. The domain is then stored like one added through the API (so every
//! node of a cluster serves and renews it, and a restart keeps it). The handshake that asked
//! is refused; later ones get the certificate once issued.

use crate::Control;
use gatehouse::app_admission::{Candidate, OnDemandCerts};
use gatehouse_config::OnDemandConfig;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Orders counted in the current hour.
#[derive(Debug)]
struct Window {
    started: Instant,
    total: u32,
    per_app: HashMap<String, u32>,
}

/// The on-demand gate.
#[derive(Debug)]
pub struct OnDemand {
    control: Weak<Control>,
    limits: OnDemandConfig,
    /// Domains being decided now (one decision per domain at a time).
    deciding: Mutex<HashSet<String>>,
    /// Domains refused lately, not asked about again for [`REFUSED_FOR`] (a client retrying
    /// costs no decision and no log line).
    refused: Mutex<HashMap<String, Instant>>,
    window: Mutex<Window>,
    runtime: tokio::runtime::Handle,
}

const HOUR: Duration = Duration::from_secs(3600);
/// How long a refusal stands before the domain is decided again.
const REFUSED_FOR: Duration = Duration::from_secs(60);

impl OnDemand {
    /// The gate for `control`, deciding on the current (control) runtime.
    pub fn new(control: &Arc<Control>, limits: OnDemandConfig) -> OnDemand {
        OnDemand {
            control: Arc::downgrade(control),
            limits,
            deciding: Mutex::default(),
            refused: Mutex::default(),
            window: Mutex::new(Window {
                started: Instant::now(),
                total: 0,
                per_app: HashMap::new(),
            }),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Takes one order from the limits, or says which one is reached.
    fn take(&self, app: &str) -> Result<(), String> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.started.elapsed() >= HOUR {
            *w = Window {
                started: Instant::now(),
                total: 0,
                per_app: HashMap::new(),
            };
        }
        if w.total >= self.limits.max_per_hour {
            return Err(format!(
                "{} orders this hour, the most for all apps (acme.on_demand.max_per_hour)",
                w.total
            ));
        }
        let n = w.per_app.entry(app.to_owned()).or_default();
        if *n >= self.limits.max_per_app_per_hour {
            return Err(format!(
                "{n} orders this hour for app {app:?}, its most (acme.on_demand.max_per_app_per_hour)"
            ));
        }
        *n += 1;
        w.total += 1;
        Ok(())
    }

    async fn decide(&self, control: &Control, domain: &str, app: &str) -> Result<bool, String> {
        let config = control.config();
        if config
            .proxy
            .base_domains
            .iter()
            .any(|b| domain == b || domain.ends_with(&format!(".{b}")))
        {
            return Ok(false); // the base domains' certificates cover these, or nothing does
        }
        let Some(records) = control.records.get() else {
            return Ok(false);
        };
        if records
            .domains()
            .await
            .map_err(|e| e.to_string())?
            .contains_key(domain)
        {
            return Ok(false); // ordered already
        }
        let candidate = Candidate {
            app_id: app.to_owned(),
            purpose: "certificate",
            measurements: None,
            domain: Some(domain.to_owned()),
        };
        control.admit(&candidate).await?;
        self.take(app)?;
        let record = crate::records::DomainRecord {
            app: app.to_owned(),
            at: gatehouse_attest::unix_now(),
            by: "on-demand".into(),
        };
        records
            .add_domain(domain, &record)
            .await
            .map_err(|e| e.to_string())?;
        control.publish_others().await.map_err(|e| e.to_string())?;
        Ok(true)
    }
}

impl OnDemandCerts for OnDemand {
    fn ask(&self, domain: &str, app: &str) {
        let Some(control) = self.control.upgrade() else {
            return;
        };
        {
            let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            refused.retain(|_, at| at.elapsed() < REFUSED_FOR);
            if refused.contains_key(domain) {
                return;
            }
        }
        if !self
            .deciding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_owned())
        {
            return;
        }
        let (domain, app) = (domain.to_owned(), app.to_owned());
        let this = control.on_demand.get().cloned();
        self.runtime.spawn(async move {
            let Some(this) = this else { return };
            match this.decide(&control, &domain, &app).await {
                Ok(true) => {
                    tracing::info!(%domain, %app, "certificate on demand: ordering")
                }
                Ok(false) => {}
                Err(why) => {
                    tracing::warn!(%domain, %app, "certificate on demand refused: {why}");
                    this.refused
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(domain.clone(), Instant::now());
                }
            }
            this.deciding
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&domain);
        });
    }
}
