//! ACME certificates whose private keys exist only inside the gateway's process (the TEE).
//!
//! - [`account`]: the ACME account, created once, its credentials sealed in the [`Store`], so
//!   the account URI (the CAA `accounturi`) survives restarts.
//! - [`keys`]: certificate keys generated in-process; the CSR is built from them; at rest they
//!   are sealed; they are never logged (no `Debug` prints them).
//! - [`order`]: one order through its challenges: DNS-01 via a [`DnsProvider`] (apex +
//!   wildcard), TLS-ALPN-01 answered by the gateway's own listener ([`alpn`]).
//! - [`pending`]: an order between finalize and a stored certificate, kept sealed so a lost
//!   certificate is downloaded again rather than ordered twice.
//! - [`schedule`]: when to renew (ARI window when the CA offers it, asked again at its
//!   `Retry-After`, else 2/3 of the lifetime with jitter; never later than expiry minus a
//!   margin) and how to back off after failures.
//! - [`manager`]: the loop that keeps each certificate fresh, checks CAA before every order,
//!   and publishes ready `CertifiedKey`s to the data plane through [`manager::Publish`].
//!
//! [`Store`]: gatehouse_store::Store
//! [`DnsProvider`]: gatehouse_dns::DnsProvider
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[macro_use]
mod nonce;
pub mod account;
pub mod alpn;
pub mod challenges;
pub mod clock;
pub mod keys;
pub mod manager;
pub mod order;
pub mod pending;
pub mod schedule;
pub mod stored;

pub use account::AccountSettings;
pub use alpn::AlpnChallenges;
pub use manager::{CertManager, Publish, Target};

/// Why issuance or renewal failed. Each message names the step and the cause.
#[derive(Debug, thiserror::Error)]
pub enum CertbotError {
    /// The ACME server or the transport failed at `step`.
    #[error("ACME {step}: {detail}")]
    Acme {
        /// What we were doing (`new account`, `new order`, `finalize`, ...).
        step: &'static str,
        /// The server's problem document or the transport error.
        detail: String,
    },
    /// The CA rate-limited us; retried later, not hammered.
    #[error("ACME {step}: rate limited by the CA: {detail}")]
    RateLimited {
        /// What we were doing.
        step: &'static str,
        /// The CA's explanation (which limit, when it resets).
        detail: String,
    },
    /// The CA did not validate a challenge.
    #[error("ACME validation of {name} failed: {detail}")]
    Validation {
        /// The identifier.
        name: String,
        /// The CA's reason.
        detail: String,
    },
    /// The CAA check refused the order.
    #[error("CAA check refused the order for {name}: {verdict}")]
    Caa {
        /// The name checked.
        name: String,
        /// The verdict and its reason.
        verdict: String,
    },
    /// Writing or propagating a DNS record failed.
    #[error("DNS: {0}")]
    Dns(#[from] gatehouse_dns::DnsError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] gatehouse_store::StoreError),
    /// Sealing or unsealing failed (a wrong key, or tampered state).
    #[error("sealing: {0}")]
    Seal(#[from] gatehouse_store::SealError),
    /// Key generation, CSR, or an unusable certificate.
    #[error("certificate: {0}")]
    Cert(String),
    /// Unusable settings.
    #[error("{0}")]
    Config(String),
}

impl CertbotError {
    /// An instant-acme error at `step`, rate limits told apart.
    pub(crate) fn acme(step: &'static str, e: instant_acme::Error) -> CertbotError {
        match e {
            instant_acme::Error::Api(p) => {
                let detail = problem_text(&p);
                if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited") {
                    CertbotError::RateLimited { step, detail }
                } else {
                    CertbotError::Acme { step, detail }
                }
            }
            other => CertbotError::Acme {
                step,
                detail: other.to_string(),
            },
        }
    }

    /// Whether retrying soon is pointless (rate limits: wait long).
    pub fn is_rate_limit(&self) -> bool {
        matches!(self, CertbotError::RateLimited { .. })
    }

    /// Whether the shared store did not answer (the CA is not at fault: no backoff).
    pub fn is_store_unavailable(&self) -> bool {
        matches!(
            self,
            CertbotError::Store(gatehouse_store::StoreError::Unavailable(_))
        )
    }
}

/// A problem document as one line: type, detail, subproblems.
pub(crate) fn problem_text(p: &instant_acme::Problem) -> String {
    let mut s = match (&p.r#type, &p.detail) {
        (Some(t), Some(d)) => format!(
            "{d} ({})",
            t.trim_start_matches("urn:ietf:params:acme:error:")
        ),
        (None, Some(d)) => d.clone(),
        (Some(t), None) => t.clone(),
        (None, None) => "no detail".into(),
    };
    for sub in &p.subproblems {
        let id = sub
            .identifier
            .as_ref()
            .map(|i| format!("{i:?}"))
            .unwrap_or_default();
        s.push_str(&format!("; {id}: {}", sub.detail.as_deref().unwrap_or("?")));
    }
    s
}
