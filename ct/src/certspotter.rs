//! SSLMate's Cert Spotter issuance API (v1): one issuance object per issuance event,
//! certificate and precertificate entries coalesced, listed after a cursor.
//!
//! `GET /v1/issuances?domain=D&include_subdomains=true&match_wildcards=true&expand=dns_names&expand=cert_der[&after=ID]`,
//! with `Authorization: Bearer <key>` when a key is configured (anonymous use is rate-limited).

use crate::http::{check_url, HttpClient};
use crate::{CtError, CtSource, Logged, Page};
use base64::Engine as _;
use serde::Deserialize;
use std::time::Duration;

const NAME: &str = "certspotter";

/// The Cert Spotter client.
pub struct CertSpotter {
    base: String,
    token: Option<String>,
    http: HttpClient,
}

impl std::fmt::Debug for CertSpotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key is a secret: never in logs.
        write!(f, "CertSpotter({})", self.base)
    }
}

/// One issuance object (the fields we read; others are ignored).
#[derive(Debug, Deserialize)]
struct Issuance {
    id: String,
    pubkey_sha256: String,
    #[serde(default)]
    dns_names: Vec<String>,
    #[serde(default)]
    cert_der: Option<String>,
}

impl CertSpotter {
    /// A client for `base` (`https://api.certspotter.com`), with an optional API key.
    pub fn new(base: &str, token: Option<String>) -> Result<CertSpotter, CtError> {
        let base = base.trim_end_matches('/').to_owned();
        check_url(&base).map_err(CtError::Config)?;
        Ok(CertSpotter {
            base,
            token,
            http: HttpClient::new(Duration::from_secs(30)),
        })
    }
}

/// Reads one page of issuances.
pub fn parse(body: &[u8]) -> Result<Vec<Logged>, CtError> {
    let list: Vec<Issuance> =
        serde_json::from_slice(body).map_err(|e| CtError::malformed(NAME, e))?;
    list.into_iter()
        .map(|i| {
            let der = match &i.cert_der {
                Some(b64) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| {
                            CtError::malformed(NAME, format!("issuance {}: cert_der: {e}", i.id))
                        })?,
                ),
                None => None,
            };
            let mut logged = match &der {
                Some(der) => crate::logged_from_der(i.id.clone(), der)
                    .map_err(|e| CtError::malformed(NAME, format!("issuance {}: {e}", i.id)))?,
                None => Logged {
                    id: i.id.clone(),
                    serial: String::new(),
                    dns_names: Vec::new(),
                    spki_sha256: String::new(),
                    precertificate: false,
                },
            };
            let claimed = i.pubkey_sha256.to_ascii_lowercase();
            if der.is_some() && logged.spki_sha256 != claimed {
                return Err(CtError::malformed(
                    NAME,
                    format!(
                        "issuance {}: pubkey_sha256 {claimed} is not the key of its cert_der",
                        i.id
                    ),
                ));
            }
            logged.spki_sha256 = claimed;
            for n in i.dns_names {
                let n = n.to_ascii_lowercase();
                if !logged.dns_names.contains(&n) {
                    logged.dns_names.push(n);
                }
            }
            Ok(logged)
        })
        .collect()
}

#[async_trait::async_trait]
impl CtSource for CertSpotter {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn poll(&self, domain: &str, cursor: Option<&str>) -> Result<Page, CtError> {
        let mut url = format!(
            "{}/v1/issuances?domain={domain}&include_subdomains=true&match_wildcards=true\
             &expand=dns_names&expand=cert_der",
            self.base
        );
        if let Some(after) = cursor {
            url.push_str("&after=");
            url.push_str(after);
        }
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let body = self
            .http
            .get(&url, &headers)
            .await
            .map_err(|detail| CtError::Source {
                source_name: NAME,
                detail,
            })?;
        let entries = parse(&body)?;
        Ok(Page {
            cursor: entries
                .last()
                .map(|e| e.id.clone())
                .or(cursor.map(str::to_owned)),
            more: !entries.is_empty(),
            entries,
        })
    }
}
