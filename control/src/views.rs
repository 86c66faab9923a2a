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
    let mut targets: Vec<(String, Vec<String>)> =
        acme.map(|a| a.targets.clone()).unwrap_or_default();
    let added = control
        .domains
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    targets.extend(added.into_iter().map(|d| (d.clone(), vec![d])));
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
            let target = targets
                .iter()
                .find(|(_, t)| t.iter().all(|n| names.contains(n)))
                .map(|(id, _)| id.clone());
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
    let ids = acme.manager.target_ids();
    if !ids.iter().any(|t| t == id) {
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

/// The largest custom-domain request read.
const DOMAIN_BODY: usize = 4096;

/// `POST /v1/custom-domains {"domain"}`: keep a certificate for a custom domain whose TXT
/// record names an app here (TLS-ALPN-01, no restart).
pub async fn add_domain(
    control: &Control,
    req: hyper::Request<hyper::body::Incoming>,
    caller: &crate::tokens::Caller,
) -> Reply {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Add {
        domain: String,
    }
    let add: Add = match gatehouse::http_server::read_json(req, DOMAIN_BODY, "{\"domain\"}").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let domain = add.domain.trim_end_matches('.').to_ascii_lowercase();
    if let Some(why) = gatehouse_config::dns_name_problem(&domain) {
        return error(422, format!("domain: {why}"));
    }
    let config = control.config();
    if let Some(base) = config
        .proxy
        .base_domains
        .iter()
        .find(|b| domain == **b || domain.ends_with(&format!(".{b}")))
    {
        return error(
            422,
            format!("domain: {domain} is under the base domain {base}: its names route already"),
        );
    }
    if control.acme.get().is_none() {
        return error(
            409,
            "no ACME here ([acme] is not configured): no certificate to keep",
        );
    }
    let Some(records) = control.records.get() else {
        return error(503, "this gateway has no store yet");
    };
    // The TXT record must name an app here now: no certificate is ordered for a name that
    // would not route (the CA's rate limits are shared by everyone behind this account).
    let target = match control
        .shared
        .routes
        .custom_domains()
        .relookup(&domain)
        .await
    {
        Ok(t) => t,
        Err(e) => return error(422, format!("domain: {domain} does not route here: {e}")),
    };
    if control.shared.routes.table().app(&target.app).is_none() {
        return error(
            422,
            format!(
                "domain: {domain}'s TXT record names app {:?}, which is not here",
                target.app
            ),
        );
    }
    let record = crate::records::DomainRecord {
        app: target.app.clone(),
        at: unix(SystemTime::now()),
        by: caller.id.clone(),
    };
    match records.add_domain(&domain, &record).await {
        Ok(true) => {}
        Ok(false) => return error(409, format!("{domain} is added already")),
        Err(e) => return error(503, e),
    }
    if let Err(e) = control.publish_others().await {
        return error(503, format!("stored, but not yet applied: {e}"));
    }
    json(
        201,
        &serde_json::json!({ "domain": domain, "app": target.app }),
    )
}

/// `DELETE /v1/custom-domains/<name>`: stop keeping its certificate.
pub async fn delete_domain(control: &Control, name: &str) -> Reply {
    let Some(records) = control.records.get() else {
        return error(503, "this gateway has no store yet");
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match records.delete_domain(&name).await {
        Ok(true) => match control.publish_others().await {
            Ok(()) => json(200, &serde_json::json!({ "deleted": name })),
            Err(e) => error(503, format!("deleted, but not yet applied: {e}")),
        },
        Ok(false) => error(404, format!("{name} was not added through the API")),
        Err(e) => error(503, e),
    }
}
