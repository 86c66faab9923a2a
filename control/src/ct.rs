//! The CT watch in the admin API: `GET /v1/ct` (status, standing alerts, resolved ones) and
//! `POST /v1/ct/alerts/<serial>/resolve` with `{"note": "<what was done>"}`: the alert
//! leaves the status (and the quoted claims) once an operator has dealt with it, say revoked
//! the certificate; the note, the token and the time are kept.

use crate::server::{error, json, Reply};
use crate::tokens::Caller;
use crate::Control;
use gatehouse_ct::CtError;

/// The longest note kept.
const NOTE_LIMIT: usize = 1000;

fn monitor(control: &Control) -> Option<&gatehouse_ct::Monitor> {
    control.shared.metrics.ct.get().map(|m| &**m)
}

fn no_watch() -> Reply {
    error(404, "no CT watch here ([ct] is not configured)")
}

/// `GET /v1/ct`.
pub async fn get(control: &Control) -> Reply {
    let Some(m) = monitor(control) else {
        return no_watch();
    };
    match m.resolved().await {
        Ok(resolved) => json(
            200,
            &serde_json::json!({
                "status": m.status(),
                "alerts": m.alerts(),
                "resolved": resolved,
            }),
        ),
        Err(e) => error(503, e),
    }
}

/// `POST /v1/ct/alerts/<serial>/resolve`.
pub async fn resolve(
    control: &Control,
    serial: &str,
    body: serde_json::Value,
    caller: &Caller,
) -> Reply {
    let Some(m) = monitor(control) else {
        return no_watch();
    };
    let note = body
        .get("note")
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .trim();
    if note.is_empty() {
        return error(
            400,
            "note: say what was done about the certificate (e.g. \"revoked at the CA\")",
        );
    }
    if note.len() > NOTE_LIMIT || note.contains(['\n', '\r']) {
        return error(400, format!("note: one line of at most {NOTE_LIMIT} bytes"));
    }
    match m.resolve(serial, note, &caller.id).await {
        Ok(r) => json(200, &r),
        Err(e @ CtError::NoSuchAlert(_)) => error(404, e),
        Err(e) => error(503, e),
    }
}
