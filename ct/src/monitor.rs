//! The watch loop: every `interval`, each source is asked for what was logged for each
//! watched domain after its stored cursor; an entry for one of our names whose key is not on
//! the [`allowlist`](crate::allowlist) is an alert: one error line, a stored record
//! (`ct/alerts/<serial>`, so a certificate seen by two sources or as precertificate and
//! certificate alerts once), a metric, a webhook POST. The cursor moves after each page is
//! handled, so a restart neither repeats nor skips an entry.
//!
//! The status the attestation claims carry: `alert` while an alert is stored, else `stale`
//! if any source has not answered in full within `stale_after` (or not yet), else `clean`.

use crate::http::{check_url, HttpClient};
use crate::{allowlist, covers, CtError, CtSource, Logged};
use gatehouse_store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CURSORS: &str = "ct/cursor/";
pub(crate) const ALERTS: &str = "ct/alerts/";
/// Pages handled per source and domain in one round (the rest continue next round).
const PAGES_PER_ROUND: usize = 100;

/// What the watch needs besides its sources.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// The domains watched, with their subdomains (`*.` prefixes are dropped).
    pub domains: Vec<String>,
    /// Between rounds.
    pub interval: Duration,
    /// A source without a full answer for this long makes the status `stale`.
    pub stale_after: Duration,
    /// Where alerts are POSTed (JSON), if anywhere.
    pub webhook: Option<String>,
}

/// One logged certificate with a key that is not ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The source that reported it first.
    pub source: String,
    /// The entry as reported.
    pub logged: Logged,
    /// When it was seen (unix seconds).
    pub seen_at: u64,
}

/// The status as of now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CtStatus {
    /// `clean`, `alert` or `stale`.
    pub status: &'static str,
    /// The oldest of the sources' last full answers (unix seconds); `None` before every
    /// source answered once.
    pub checked_at: Option<u64>,
    /// The serials of the stored alerts.
    pub alerts: Vec<String>,
    /// Per source: the last error, if its last round failed.
    pub errors: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone)]
struct SourceState {
    last_ok: Option<u64>,
    last_error: Option<String>,
}

/// The watch.
pub struct Monitor {
    sources: Vec<Arc<dyn CtSource>>,
    pub(crate) store: Arc<dyn Store>,
    config: MonitorConfig,
    state: Mutex<BTreeMap<&'static str, SourceState>>,
    pub(crate) alerts: Mutex<Vec<Alert>>,
    alerts_raised: AtomicU64,
    webhook_failures: AtomicU64,
    http: HttpClient,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.sources.iter().map(|s| s.name()).collect();
        write!(f, "ct::Monitor({names:?}, {:?})", self.config.domains)
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Monitor {
    /// A watch over `sources`; alerts already stored are loaded.
    pub async fn new(
        sources: Vec<Arc<dyn CtSource>>,
        store: Arc<dyn Store>,
        mut config: MonitorConfig,
    ) -> Result<Monitor, CtError> {
        if let Some(url) = &config.webhook {
            check_url(url).map_err(|e| CtError::Config(format!("ct webhook: {e}")))?;
        }
        let mut domains: Vec<String> = config
            .domains
            .iter()
            .map(|d| {
                d.trim_start_matches("*.")
                    .trim_end_matches('.')
                    .to_ascii_lowercase()
            })
            .collect();
        domains.sort();
        domains.dedup();
        config.domains = domains;
        let alerts = crate::resolve::stored_alerts(store.as_ref()).await?;
        let state = sources
            .iter()
            .map(|s| (s.name(), SourceState::default()))
            .collect();
        Ok(Monitor {
            sources,
            store,
            config,
            state: Mutex::new(state),
            alerts: Mutex::new(alerts),
            alerts_raised: AtomicU64::new(0),
            webhook_failures: AtomicU64::new(0),
            http: HttpClient::new(Duration::from_secs(10)),
        })
    }

    /// The status as of now.
    pub fn status(&self) -> CtStatus {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let alerts: Vec<String> = {
            let a = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
            a.iter().map(|a| a.logged.serial.clone()).collect()
        };
        let t = now();
        let stale_after = self.config.stale_after.as_secs();
        let stale = state.values().any(|s| {
            s.last_ok
                .is_none_or(|ok| t.saturating_sub(ok) > stale_after)
        });
        let checked_at = match state.values().any(|s| s.last_ok.is_none()) {
            true => None,
            false => state.values().filter_map(|s| s.last_ok).min(),
        };
        let status = match (!alerts.is_empty(), stale || state.is_empty()) {
            (true, _) => "alert",
            (false, true) => "stale",
            (false, false) => "clean",
        };
        CtStatus {
            status,
            checked_at,
            alerts,
            errors: state
                .iter()
                .filter_map(|(n, s)| s.last_error.clone().map(|e| (n.to_string(), e)))
                .collect(),
        }
    }

    /// The stored alerts.
    pub fn alerts(&self) -> Vec<Alert> {
        self.alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Alerts raised since start, and webhook deliveries that failed.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.alerts_raised.load(Ordering::Relaxed),
            self.webhook_failures.load(Ordering::Relaxed),
        )
    }

    /// Per source: whether its last round succeeded.
    pub fn sources_up(&self) -> Vec<(&'static str, bool)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .iter()
            .map(|(n, s)| (*n, s.last_ok.is_some() && s.last_error.is_none()))
            .collect()
    }

    /// Runs rounds until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.round().await;
            tokio::time::sleep(self.config.interval).await;
        }
    }

    /// One round over every source and domain. The stored alerts are read first: on a
    /// cluster another node may have raised or resolved one.
    pub async fn round(&self) {
        match crate::resolve::stored_alerts(self.store.as_ref()).await {
            Ok(stored) => *self.alerts.lock().unwrap_or_else(|p| p.into_inner()) = stored,
            Err(e) => tracing::warn!("CT watch: reading the stored alerts: {e}"),
        }
        for source in &self.sources {
            let result = self.round_of(source.as_ref()).await;
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let s = state.entry(source.name()).or_default();
            match result {
                Ok(()) => {
                    s.last_ok = Some(now());
                    s.last_error = None;
                }
                Err(e) => {
                    tracing::warn!(
                        source = source.name(),
                        "CT watch: {e}; status stale until it answers"
                    );
                    s.last_error = Some(e.to_string());
                }
            }
        }
    }

    async fn round_of(&self, source: &dyn CtSource) -> Result<(), CtError> {
        for domain in &self.config.domains {
            let key = format!("{CURSORS}{}/{domain}", source.name());
            let mut cursor = self
                .store
                .get(&key)
                .await?
                .map(|v| String::from_utf8_lossy(&v.value).into_owned());
            for _ in 0..PAGES_PER_ROUND {
                let page = source.poll(domain, cursor.as_deref()).await?;
                if !page.entries.is_empty() {
                    let ours = allowlist::load(self.store.as_ref()).await?;
                    for logged in page.entries {
                        self.check(source.name(), logged, &ours).await?;
                    }
                }
                if page.cursor != cursor {
                    if let Some(c) = &page.cursor {
                        self.store.put(&key, c.as_bytes()).await?;
                    }
                    cursor = page.cursor;
                }
                if !page.more {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn check(
        &self,
        source: &'static str,
        logged: Logged,
        ours: &std::collections::HashSet<String>,
    ) -> Result<(), CtError> {
        let watched = logged
            .dns_names
            .iter()
            .any(|n| self.config.domains.iter().any(|d| covers(d, n)));
        if !watched || ours.contains(&logged.spki_sha256) {
            return Ok(());
        }
        let serial = if logged.serial.is_empty() {
            format!("{source}-{}", logged.id)
        } else {
            logged.serial.clone()
        };
        let key = format!("{ALERTS}{serial}");
        if self.store.get(&key).await?.is_some() {
            return Ok(()); // seen already (another source, or its precertificate)
        }
        if crate::resolve::is_resolved(self.store.as_ref(), &serial).await? {
            return Ok(()); // an operator dealt with it; another source reports it late
        }
        let alert = Alert {
            source: source.into(),
            logged,
            seen_at: now(),
        };
        let json = serde_json::to_vec(&alert).unwrap_or_default();
        self.store.put(&key, &json).await?;
        self.alerts_raised.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            source,
            serial = %serial,
            names = ?alert.logged.dns_names,
            spki_sha256 = %alert.logged.spki_sha256,
            precertificate = alert.logged.precertificate,
            "CT ALERT: a certificate for our names was logged with a key that never entered our CSRs"
        );
        self.alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(alert.clone());
        if let Some(url) = &self.config.webhook {
            let body = serde_json::json!({
                "event": "ct_alert",
                "serial": serial,
                "source": source,
                "id": alert.logged.id,
                "dns_names": alert.logged.dns_names,
                "spki_sha256": alert.logged.spki_sha256,
                "precertificate": alert.logged.precertificate,
                "seen_at": alert.seen_at,
            });
            if let Err(e) = self
                .http
                .post_json(url, body.to_string().into_bytes())
                .await
            {
                self.webhook_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("CT alert webhook: {e} (the alert stays stored and in the status)");
            }
        }
        Ok(())
    }
}
