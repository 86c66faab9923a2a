//! Certificate Transparency watch.
//!
//! Browsers only accept certificates that were logged in CT. So if every certificate ever
//! logged for our names carries a key that entered one of our own CSRs (made inside the TEE,
//! recorded before the order was finalized: [`allowlist`]), and CAA pins issuance to our ACME
//! account, a connection a browser accepts for those names ends in the TEE. This crate checks
//! the first half against public CT search services ([`CtSource`]: [`certspotter`],
//! [`crtsh`]), keeps a cursor per source and domain in the store, and raises an alert
//! ([`monitor`]) for any logged certificate or precertificate of our names with another key.
//! A source that cannot be reached makes the status `stale`, never `clean`.

pub mod allowlist;
pub mod certspotter;
pub mod crtsh;
mod http;
pub mod monitor;
pub mod resolve;

pub use monitor::{Alert, CtStatus, Monitor, MonitorConfig};
pub use resolve::Resolved;

/// Why a CT operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CtError {
    /// The source could not be reached or answered with an error.
    #[error("{source_name}: {detail}")]
    Source {
        /// `certspotter`, `crtsh`.
        source_name: &'static str,
        /// What went wrong, in one line.
        detail: String,
    },
    /// The source answered something that is not its documented shape.
    #[error("{source_name}: unexpected answer: {detail}")]
    Malformed {
        /// `certspotter`, `crtsh`.
        source_name: &'static str,
        /// What did not parse.
        detail: String,
    },
    /// No stored alert has this serial.
    #[error("no CT alert with serial {0:?}")]
    NoSuchAlert(String),
    /// A URL in the configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The store refused.
    #[error("store: {0}")]
    Store(#[from] gatehouse_store::StoreError),
}

impl CtError {
    /// `source_name` answered something that is not its documented shape.
    pub fn malformed(source_name: &'static str, detail: impl std::fmt::Display) -> CtError {
        CtError::Malformed {
            source_name,
            detail: detail.to_string(),
        }
    }
}

/// One logged certificate or precertificate, as a source reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Logged {
    /// The source's own id for it (Cert Spotter's issuance id, crt.sh's certificate id).
    pub id: String,
    /// The serial number, lower-case hex without separators.
    pub serial: String,
    /// The DNS names it is valid for (SANs, and the CN where a source reports it).
    pub dns_names: Vec<String>,
    /// SHA-256 (hex) of its SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// Whether the entry is a precertificate (RFC 6962 poison extension).
    pub precertificate: bool,
}

/// One answer of a source: entries after the cursor, and the cursor to ask from next.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Entries, oldest first.
    pub entries: Vec<Logged>,
    /// Where the next poll continues (unchanged when nothing is new).
    pub cursor: Option<String>,
    /// Whether the source has more right away (page again before sleeping).
    pub more: bool,
}

/// A CT search service.
#[async_trait::async_trait]
pub trait CtSource: Send + Sync {
    /// Its name in logs, metrics and store keys.
    fn name(&self) -> &'static str;
    /// Entries for `domain` and its subdomains logged after `cursor` (`None`: from the start).
    async fn poll(&self, domain: &str, cursor: Option<&str>) -> Result<Page, CtError>;
}

/// SHA-256 (hex) of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The RFC 6962 precertificate poison extension.
const POISON_OID: &str = "1.3.6.1.4.1.11129.2.4.3";

/// Reads serial, SPKI hash, DNS names and the poison extension from a DER certificate.
pub fn logged_from_der(id: String, der: &[u8]) -> Result<Logged, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
    let serial = cert
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let mut dns_names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                dns_names.push(d.to_ascii_lowercase());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            let s = s.to_ascii_lowercase();
            let hostname = s.contains('.') && !s.contains(char::is_whitespace);
            if hostname && !dns_names.contains(&s) {
                dns_names.push(s);
            }
        }
    }
    let precertificate = cert
        .extensions()
        .iter()
        .any(|e| e.oid.to_id_string() == POISON_OID);
    Ok(Logged {
        id,
        serial: if serial.is_empty() {
            "00".into()
        } else {
            serial
        },
        dns_names,
        spki_sha256: sha256_hex(cert.public_key().raw),
        precertificate,
    })
}

/// Whether `name` is `domain` or under it (a wildcard `*.domain` counts as under it).
pub fn covers(domain: &str, name: &str) -> bool {
    let domain = domain.trim_start_matches("*.").trim_end_matches('.');
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim_start_matches("*.");
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn ct_monitor_covers_names_under_a_domain_only() {
        assert!(covers("gw.test", "gw.test"));
        assert!(covers("*.gw.test", "app.gw.test"));
        assert!(covers("gw.test", "*.gw.test"));
        assert!(covers("gw.test", "A.B.GW.TEST."));
        assert!(!covers("gw.test", "evilgw.test"));
        assert!(!covers("gw.test", "gw.test.evil"));
    }
}

#[cfg(test)]
mod tests;
