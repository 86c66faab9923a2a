//! The read-mostly resources: custom domains, certificates (and renew now), CAA verdicts,
//! the attestation, the VPC, the cluster's nodes, and the dashboard's overview of them all.

use crate::server::{error, json, Reply};
use crate::Control;
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One cached custom-domain mapping.
#[derive(Debug, Clone, Serialize)]
pub struct CustomDomainView {
    /// The domain.
    pub domain: String,
    /// The app its TXT record names, if it routes.
    pub app: Option<String>,
    /// The port it names, if any.
    pub port: Option<u16>,
    /// Why it does not route, if it does not.
    pub error: Option<String>,
}

fn domain_view(
    domain: String,
    r: Result<
        gatehouse::route::custom_domain::CustomTarget,
        gatehouse::route::custom_domain::CustomDomainError,
    >,
) -> CustomDomainView {
    match r {
        Ok(t) => CustomDomainView {
            domain,
            app: Some(t.app),
            port: t.port,
            error: None,
        },
        Err(e) => CustomDomainView {
            domain,
            app: None,
            port: None,
            error: Some(e.to_string()),
        },
    }
}

/// The cached custom-domain mappings.
pub fn custom_domains(control: &Control) -> Vec<CustomDomainView> {
    let custom = control.shared.routes.custom_domains();
    custom
        .cached()
        .into_iter()
        .map(|(d, r)| domain_view(d, r))
        .collect()
}

/// Looks a custom domain up again, forgetting the cached answer.
pub async fn relookup(control: &Control, name: &str) -> Reply {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let answer = control.shared.routes.custom_domains().relookup(&name).await;
    json(200, &domain_view(name, answer))
}

/// One certificate served now.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateView {
    /// The ACME target id renewing it (`POST /v1/certificates/<id>/renew`), if any.
    pub id: Option<String>,
    /// Its DNS names.
    pub names: Vec<String>,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Validity (unix seconds).
    pub not_before: u64,
    /// Validity (unix seconds).
    pub not_after: u64,
    /// Whole days left.
    pub days_left: i64,
    /// `sealed` (made in the TEE, ACME), `generated` (development) or `imported` (a file).
    pub key_origin: &'static str,
    /// When this node last renewed it (unix seconds).
    pub last_renewal: Option<u64>,
    /// When the next renewal is planned (unix seconds).
    pub next_renewal: Option<u64>,
}

/// The certificates served now, soonest expiry first.
pub fn certificates(control: &Control) -> Vec<CertificateView> {
    let acme = control.acme.get();
    let now = unix(SystemTime::now()) as i64;
    let mut out: Vec<CertificateView> = control
        .shared
        .tls
        .resolver
        .leaves()
        .into_iter()
        .filter_map(|(der, origin)| {
            let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
            let names = gatehouse::terminate::certs::dns_names(&der).unwrap_or_default();
            let not_before = cert.validity().not_before.timestamp();
            let not_after = cert.validity().not_after.timestamp();
            let target = acme.and_then(|a| {
                a.targets
                    .iter()
                    .find(|(_, t)| t.iter().all(|n| names.contains(n)))
                    .map(|(id, _)| id.clone())
            });
            let stats = acme.map(|a| a.manager.stats.clone());
            let lookup = |m: &std::sync::Mutex<std::collections::BTreeMap<String, SystemTime>>| {
                let id = target.as_ref()?;
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .copied()
                    .map(unix)
            };
            let last_renewal = stats.as_ref().and_then(|s| lookup(&s.renewed_at));
            let next_renewal = stats.as_ref().and_then(|s| {
                let id = target.as_ref()?;
                let plans = s.schedule.lock().unwrap_or_else(|p| p.into_inner());
                plans.get(id).map(|p| unix(p.renew_at))
            });
            use gatehouse::terminate::certs::KeyOrigin;
            Some(CertificateView {
                id: target,
                names,
                issuer: cert.issuer().to_string(),
                not_before: not_before.max(0) as u64,
                not_after: not_after.max(0) as u64,
                days_left: (not_after - now).div_euclid(86_400),
                key_origin: match origin {
                    KeyOrigin::Sealed => "sealed",
                    KeyOrigin::Generated => "generated",
                    KeyOrigin::Imported => "imported",
                },
                last_renewal,
                next_renewal,
            })
        })
        .collect();
    out.sort_by_key(|c| c.not_after);
    out
}

/// `POST /v1/certificates/<id>/renew`: wakes the target's renewal loop.
pub fn renew(control: &Control, id: &str) -> Reply {
    let Some(acme) = control.acme.get() else {
        return error(404, "no ACME certificates here ([acme] is not configured)");
    };
    if !acme.targets.iter().any(|(t, _)| t == id) {
        let ids: Vec<&str> = acme.targets.iter().map(|(t, _)| t.as_str()).collect();
        return error(
            404,
            format!("no certificate target {id:?} (targets: {ids:?})"),
        );
    }
    match acme.manager.renew_now(id) {
        true => json(202, &serde_json::json!({ "renewing": id })),
        false => error(
            409,
            format!("{id:?} has no renewal loop running yet (the ACME account is not ready)"),
        ),
    }
}

/// CAA verdicts as last checked.
#[derive(Debug, Clone, Serialize)]
pub struct CaaView {
    /// Our ACME account, once known.
    pub account_uri: Option<String>,
    /// Name → verdict line (`locked`, `unlocked: ...`).
    pub verdicts: std::collections::BTreeMap<String, String>,
}

/// The CAA verdicts of the last periodic check.
pub fn caa(control: &Control) -> CaaView {
    match control.shared.metrics.acme.get() {
        Some(stats) => CaaView {
            account_uri: stats.account_uri.get().cloned(),
            verdicts: stats
                .caa_verdicts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        },
        None => CaaView {
            account_uri: None,
            verdicts: Default::default(),
        },
    }
}

/// What the attestation shows at a glance (the bundle has the rest).
#[derive(Debug, Clone, Serialize)]
pub struct AttestationSummary {
    /// `tdx` or `simulated`.
    pub tee: String,
    /// MRTD, hex.
    pub mrtd: String,
    /// RTMR0-3, hex.
    pub rtmr: [String; 4],
    /// The TCB status, checked against the collateral the gateway serves.
    pub tcb_status: String,
    /// How secrets are sealed (`tee`, `development`, ...).
    pub sealing: String,
    /// Each served key and where it came from.
    pub keys: serde_json::Value,
}

async fn summary(control: &Control) -> Result<(AttestationSummary, serde_json::Value), String> {
    let attestor = control
        .shared
        .attest
        .get()
        .ok_or("attestation is off ([tee] provider = \"none\")")?;
    let bundle = attestor
        .bundle(&control.shared, None)
        .await
        .map_err(|e| e.to_string())?;
    let (mrtd, rtmr) = gatehouse_attest::verify::measurements(&bundle.evidence.quote)
        .map_err(|e| e.to_string())?;
    let simulated = bundle.evidence.tee == gatehouse_attest::provider::TeeKind::Simulated;
    let tcb_status = match &bundle.collateral {
        Some(c) => match gatehouse_attest::verify::verify_quote(
            &bundle.evidence,
            c,
            gatehouse_attest::unix_now(),
            simulated,
        ) {
            Ok(q) => q.tcb_status(),
            Err(e) => format!("not verified: {e}"),
        },
        None => "not verified: no collateral".into(),
    };
    let summary = AttestationSummary {
        tee: serde_json::to_value(bundle.evidence.tee)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        mrtd,
        rtmr,
        tcb_status,
        sealing: bundle.claims["sealing"].as_str().unwrap_or("").to_owned(),
        keys: bundle.claims["keys"].clone(),
    };
    let mut bundle = serde_json::to_value(&bundle).map_err(|e| e.to_string())?;
    if let Some(m) = bundle.as_object_mut() {
        m.remove("collateral");
    }
    Ok((summary, bundle))
}

/// `GET /v1/attestation`: the summary and the bundle (without collateral).
pub async fn attestation(control: &Control) -> Reply {
    match summary(control).await {
        Ok((s, bundle)) => json(200, &serde_json::json!({ "summary": s, "bundle": bundle })),
        Err(e) => error(503, e),
    }
}

/// `GET /v1/vpc`: leases and peers.
pub async fn vpc(control: &Control) -> Reply {
    match control.vpc.get() {
        Some(v) => json(200, &v.overview().await),
        None => error(404, "no VPC here ([vpc] is not configured)"),
    }
}

/// `GET /v1/nodes`: the cluster's members.
pub async fn nodes(control: &Control) -> Reply {
    let Some(store) = control.cluster.get() else {
        return error(404, "not a cluster node ([store] backend is embedded)");
    };
    match gatehouse_cluster::status(&**store).await {
        Ok(s) => json(200, &s),
        Err(e) => error(503, e),
    }
}

/// Everything the dashboard shows, in one answer.
pub async fn overview(control: &Control) -> serde_json::Value {
    let m = &control.shared.metrics;
    let attestation = match summary(control).await {
        Ok((s, _)) => serde_json::to_value(s).unwrap_or_default(),
        Err(e) => serde_json::json!({ "error": e }),
    };
    let vpc = match control.vpc.get() {
        Some(v) => serde_json::to_value(v.overview().await).unwrap_or_default(),
        None => serde_json::Value::Null,
    };
    let nodes = match control.cluster.get() {
        Some(store) => match gatehouse_cluster::status(&**store).await {
            Ok(s) => serde_json::to_value(s).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        },
        None => serde_json::Value::Null,
    };
    serde_json::json!({
        "now": unix(SystemTime::now()),
        "connections": { "accepted": m.accepted_total(), "active": m.active() },
        "apps": crate::api::apps(control),
        "certificates": certificates(control),
        "caa": caa(control),
        "attestation": attestation,
        "vpc": vpc,
        "nodes": nodes,
    })
}
