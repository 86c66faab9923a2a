//! Reloading the config file (SIGHUP, `POST /v1/reload`): all or nothing.
//!
//! The new file is read and validated whole; then every part that can fail is prepared
//! without touching the running gateway (certificates loaded, tokens read, the route table
//! built). Only when all of them succeeded are they swapped in: routes, certificates,
//! connection caps, timeouts and PROXY trust, admin tokens, admission. New connections see
//! them; established ones keep what they started with. Listeners added start (bound before
//! anything is swapped, so a port in use refuses the reload); listeners removed stop
//! accepting while their connections finish. Anything else that changed is bound at start
//! (workers, store, TEE, ACME, DNS, VPC, cluster, the HTTP engine): a reload that changes it
//! is refused, naming each key, and the running config stays.

use crate::Control;
use gatehouse::route::{AppSpec, Origin};
use gatehouse::terminate::certs::CertSet;
use gatehouse_config::Config;
use serde::Serialize;
use std::sync::Arc;

/// What a reload changed.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Apps added, changed and removed (ids).
    pub apps_added: Vec<String>,
    /// Apps whose settings or instances changed.
    pub apps_changed: Vec<String>,
    /// Apps no longer in the file.
    pub apps_removed: Vec<String>,
    /// Sections whose settings changed (`tls`, `proxy.timeouts`, `proxy.limits`, `admin`, ...).
    pub changed: Vec<String>,
    /// TLS listeners started (as bound: a port 0 resolved).
    pub listeners_added: Vec<String>,
    /// TLS listeners that stopped accepting (their connections go on).
    pub listeners_removed: Vec<String>,
}

/// The sections a running gateway cannot change: they are bound at start.
fn fixed(old: &Config, new: &Config) -> Vec<String> {
    let mut p = Vec::new();
    let mut differs = |key: &str, same: bool| {
        if !same {
            p.push(format!(
                "{key}: changed, but it is bound at start: restart to change it (or put back the \
                 running value)"
            ));
        }
    };
    differs("proxy.workers", old.proxy.workers == new.proxy.workers);
    differs("proxy.http", old.proxy.http == new.proxy.http);
    differs(
        "proxy.custom_domains",
        old.proxy.custom_domains == new.proxy.custom_domains,
    );
    differs("tls.resumption", old.tls.resumption == new.tls.resumption);
    differs(
        "admin.listen",
        old.admin.as_ref().map(|a| a.listen) == new.admin.as_ref().map(|a| a.listen),
    );
    differs("acme", old.acme == new.acme);
    differs("dns", old.dns == new.dns);
    differs("store", old.store == new.store);
    differs("tee", old.tee == new.tee);
    // Who may reach whom over the VPC changes live; the rest of `[vpc]` is bound at start.
    let without_reach = |v: &Option<gatehouse_config::VpcConfig>| {
        v.clone().map(|mut v| {
            v.apps.values_mut().for_each(|a| a.reach.clear());
            v
        })
    };
    differs("vpc", without_reach(&old.vpc) == without_reach(&new.vpc));
    differs("cluster", old.cluster == new.cluster);
    p
}

impl Control {
    /// Reloads the config file; `by` names who asked (`sighup`, `api`). On refusal, every
    /// problem with its key path, and nothing changed.
    pub async fn reload(&self, by: &str) -> Result<ReloadReport, Vec<String>> {
        let _one = self.changing.lock().await;
        let result = self.reload_now().await;
        match &result {
            Ok(r) => tracing::info!(
                by,
                added = ?r.apps_added,
                changed = ?r.apps_changed,
                removed = ?r.apps_removed,
                sections = ?r.changed,
                "config reloaded"
            ),
            Err(problems) => {
                tracing::warn!(by, "config reload refused; the running config stays:");
                for p in problems {
                    tracing::warn!("  {p}");
                }
            }
        }
        result
    }

    async fn reload_now(&self) -> Result<ReloadReport, Vec<String>> {
        let Some(path) = &self.config_path else {
            return Err(vec![
                "started without --config (development defaults): there is no file to reload"
                    .into(),
            ]);
        };
        let new = Config::from_file(path).map_err(|e| e.problems())?;
        let old = self.config();
        let mut problems = fixed(&old, &new);
        // An app made through the API keeps its id: the file may not take it over.
        for (i, app) in new.apps.iter().enumerate() {
            if self.shared.routes.api_apps().iter().any(|a| a.id == app.id) {
                problems.push(format!(
                    "apps[{i}].id: {:?} is an app created through the admin API (delete it \
                     there first)",
                    app.id
                ));
            }
        }
        // Prepared, not applied.
        let mut certs = CertSet::default();
        for (i, pair) in new.tls.certificates.iter().enumerate() {
            if let Err(e) = certs.load(&pair.cert, &pair.key) {
                problems.push(format!("tls.certificates[{i}]: {e}"));
            }
        }
        let tokens = match &new.admin {
            Some(a) => match crate::tokens::Tokens::load(a) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(format!("admin: {e}"));
                    None
                }
            },
            None => None,
        };
        let admission = match new.admission.as_ref().map(crate::admission::Admission::new) {
            Some(Err(e)) => {
                problems.push(format!("admission: {e}"));
                None
            }
            Some(Ok(a)) => Some(Arc::new(a)),
            None => None,
        };
        let listeners = match self.listeners.get() {
            Some(l) if problems.is_empty() => match l.prepare(&new.proxy.listen) {
                Ok(n) => Some(n),
                Err(e) => {
                    problems.push(format!("proxy.listen: {e}"));
                    None
                }
            },
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let routes = &self.shared.routes;
        let before = routes.static_apps();
        let mut specs: Vec<AppSpec> = new.apps.iter().map(AppSpec::from).collect();
        specs.extend(
            before
                .iter()
                .filter(|a| a.origin == Origin::Builtin)
                .cloned(),
        );
        // The one step that publishes and can still fail: then nothing else is applied.
        routes
            .set_static(new.proxy.base_domains.clone(), specs.clone())
            .map_err(|e| vec![format!("apps: {e}")])?;

        let mut changed = Vec::new();
        let (mut listeners_added, mut listeners_removed) = (Vec::new(), Vec::new());
        if let (Some(l), Some(new_listeners)) = (self.listeners.get(), listeners) {
            let (added, removed) = l.apply(new_listeners);
            for addr in &added {
                gatehouse::upstream::own::register(*addr);
                tracing::info!("listening on {addr} (TLS), added by a reload");
            }
            for addr in &removed {
                tracing::info!("stopped accepting on {addr}; its connections go on");
            }
            listeners_added = added.iter().map(|a| a.to_string()).collect();
            listeners_removed = removed.iter().map(|a| a.to_string()).collect();
        }
        if old.tls.certificates != new.tls.certificates {
            changed.push("tls.certificates".to_owned());
        }
        self.shared.tls.resolver.set_static(certs);
        let tunables = gatehouse::conn::Tunables::of(&new.proxy);
        if old.proxy.timeouts != new.proxy.timeouts {
            changed.push("proxy.timeouts".into());
        }
        if old.proxy.limits != new.proxy.limits {
            changed.push("proxy.limits".into());
        }
        if old.proxy.base_domains != new.proxy.base_domains {
            changed.push("proxy.base_domains".into());
        }
        if old.proxy.proxy_protocol_inbound != new.proxy.proxy_protocol_inbound
            || old.proxy.proxy_protocol_trusted != new.proxy.proxy_protocol_trusted
        {
            changed.push("proxy.proxy_protocol".into());
        }
        self.shared.tunables.store(Arc::new(tunables));
        self.shared
            .admission
            .update(&new.proxy.limits, gatehouse::fdlimit::current());
        if let Some(t) = tokens {
            if old.admin != new.admin {
                changed.push("admin".into());
            }
            self.tokens.store(Arc::new(t));
        }
        if old.admission != new.admission {
            changed.push("admission".into());
        }
        self.admission.store(admission);
        if old.vpc != new.vpc {
            changed.push("vpc.apps.reach".into());
        }

        let ids = |apps: &[AppSpec]| -> Vec<String> {
            apps.iter()
                .filter(|a| a.origin == Origin::Config)
                .map(|a| a.id.clone())
                .collect()
        };
        let (old_ids, new_ids) = (ids(&before), ids(&specs));
        let report = ReloadReport {
            apps_added: new_ids
                .iter()
                .filter(|i| !old_ids.contains(i))
                .cloned()
                .collect(),
            apps_removed: old_ids
                .iter()
                .filter(|i| !new_ids.contains(i))
                .cloned()
                .collect(),
            apps_changed: specs
                .iter()
                .filter(|s| s.origin == Origin::Config)
                .filter(|s| before.iter().any(|b| b.id == s.id && b != *s))
                .map(|s| s.id.clone())
                .collect(),
            changed,
            listeners_added,
            listeners_removed,
        };
        self.config.store(Arc::new(new));
        if let Err(e) = self.publish_reach().await {
            tracing::warn!("vpc reach: {e}");
        }
        Ok(report)
    }

    /// Reloads on every SIGHUP, forever.
    pub async fn reload_on_sighup(self: Arc<Self>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("SIGHUP handler: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            let _ = self.reload("sighup").await;
        }
    }
}
