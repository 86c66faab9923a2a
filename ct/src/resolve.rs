//! Alerts an operator has dealt with. An alert stays in the status (and so in the quoted
//! claims) until someone resolves it with a note saying what was done (the certificate
//! revoked, the CA told); the record then moves from `ct/alerts/<serial>` to
//! `ct/resolved/<serial>` with the note, who and when, and a source that reports the same
//! certificate later does not raise it again. The record is written before the alert is
//! removed: a crash between the two leaves the alert standing, never lost.

use crate::monitor::ALERTS;
use crate::{Alert, CtError, Monitor};
use gatehouse_store::Store;
use serde::{Deserialize, Serialize};

const RESOLVED: &str = "ct/resolved/";

/// A resolved alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The alert as it was raised.
    pub alert: Alert,
    /// What the operator did about it.
    pub note: String,
    /// Who resolved it (the admin token's id).
    pub by: String,
    /// When (unix seconds).
    pub resolved_at: u64,
}

/// The stored alerts, oldest first; an unreadable record is kept as an alert of its own.
pub(crate) async fn stored_alerts(store: &dyn Store) -> Result<Vec<Alert>, CtError> {
    let mut alerts = Vec::new();
    for (key, v) in store.list(ALERTS).await? {
        match serde_json::from_slice::<Alert>(&v.value) {
            Ok(a) => alerts.push(a),
            Err(e) => {
                tracing::warn!("{key}: unreadable alert record ({e}); counted as an alert");
                alerts.push(unreadable(key.trim_start_matches(ALERTS)));
            }
        }
    }
    alerts.sort_by_key(|a| a.seen_at);
    Ok(alerts)
}

/// An alert whose record does not parse: it still counts (fail closed).
fn unreadable(serial: &str) -> Alert {
    Alert {
        source: "unreadable".into(),
        logged: crate::Logged {
            serial: serial.to_owned(),
            ..crate::Logged::default()
        },
        seen_at: 0,
    }
}

/// Whether the alert for `serial` was resolved.
pub(crate) async fn is_resolved(store: &dyn Store, serial: &str) -> Result<bool, CtError> {
    Ok(store.get(&format!("{RESOLVED}{serial}")).await?.is_some())
}

impl Monitor {
    /// Resolves the alert for `serial` with `note`, by `by`: the status no longer counts it.
    pub async fn resolve(&self, serial: &str, note: &str, by: &str) -> Result<Resolved, CtError> {
        let key = format!("{ALERTS}{serial}");
        let stored = self.store.get(&key).await?;
        let Some(stored) = stored else {
            return Err(CtError::NoSuchAlert(serial.to_owned()));
        };
        let alert: Alert =
            serde_json::from_slice(&stored.value).unwrap_or_else(|_| unreadable(serial));
        let resolved = Resolved {
            alert,
            note: note.to_owned(),
            by: by.to_owned(),
            resolved_at: crate::monitor::now(),
        };
        let json = serde_json::to_vec(&resolved).unwrap_or_default();
        self.store
            .put(&format!("{RESOLVED}{serial}"), &json)
            .await?;
        self.store.delete(&key).await?;
        self.alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a| a.logged.serial != serial);
        tracing::warn!(serial, by, note, "CT alert resolved");
        Ok(resolved)
    }

    /// The resolved alerts, most recent first.
    pub async fn resolved(&self) -> Result<Vec<Resolved>, CtError> {
        let mut all: Vec<Resolved> = self
            .store
            .list(RESOLVED)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v.value).ok())
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.resolved_at));
        Ok(all)
    }
}
