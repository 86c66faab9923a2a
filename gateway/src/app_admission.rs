//! The seam where an operator's decision admits apps: before an app created through the admin
//! API exists, and before an app CVM joins the VPC. The control plane implements it (a webhook
//! or an allow-list file, `[admission]`); without one every app the config names is admitted.

use serde::Serialize;

/// What the decision is asked about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Candidate {
    /// The app id.
    pub app_id: String,
    /// `create` (an app through the admin API), `vpc-register` (an app CVM joining) or
    /// `certificate` (a custom domain's certificate on demand).
    pub purpose: &'static str,
    /// The custom domain a certificate is asked for (`certificate` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// What the CVM's verified quote measured (VPC registrations only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurements: Option<Measurements>,
}

/// The measurements of a verified TDX quote, hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Measurements {
    /// `simulated` or `tdx`.
    pub tee: String,
    /// MRTD.
    pub mrtd: String,
    /// RTMR0-3.
    pub rtmr: [String; 4],
    /// SHA-256 of the RTMR3 event log as sent (JSON), hex.
    pub event_log_digest: String,
    /// The TCB status Intel's collateral gave.
    pub tcb_status: String,
}

impl Measurements {
    /// The measurements of `quote`, verified from `evidence`.
    pub fn of(
        evidence: &gatehouse_attest::provider::Evidence,
        quote: &gatehouse_attest::verify::QuoteVerified,
    ) -> Measurements {
        let hex = gatehouse_attest::hex::encode;
        let log = serde_json::to_vec(&evidence.event_log).unwrap_or_default();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &log);
        let td = &quote.td;
        Measurements {
            tee: serde_json::to_value(evidence.tee)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            mrtd: hex(&td.mr_td),
            rtmr: [
                hex(&td.rt_mr0),
                hex(&td.rt_mr1),
                hex(&td.rt_mr2),
                hex(&td.rt_mr3),
            ],
            event_log_digest: hex(digest.as_ref()),
            tcb_status: quote.tcb_status(),
        }
    }
}

/// Decides whether an app may exist or join.
#[async_trait::async_trait]
pub trait AdmitApps: Send + Sync + std::fmt::Debug {
    /// `Ok` admits; `Err` denies and says why (one line).
    async fn admit(&self, candidate: &Candidate) -> Result<(), String>;
}

/// Asked when a name routes to an app but no certificate covers it (on-demand TLS).
pub trait OnDemandCerts: Send + Sync + std::fmt::Debug {
    /// Starts getting a certificate for `domain`, which routes to `app`, if the operator's
    /// rules allow it. Returns at once: the handshake that asked is not held.
    fn ask(&self, domain: &str, app: &str);
}
