//! Sectigo's crt.sh: `GET /?q=<domain>&output=json&exclude=expired` lists the logged
//! certificates and precertificates of a name (and `q=%.<domain>` its subdomains), each with
//! crt.sh's numeric id; `GET /?d=<id>` downloads one (PEM). The list carries no key, so each
//! entry past the cursor is downloaded once to hash its SubjectPublicKeyInfo.

use crate::http::{check_url, HttpClient};
use crate::{CtError, CtSource, Page};
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;
use std::time::Duration;

const NAME: &str = "crtsh";
/// Downloads per poll; the rest wait for the next page.
const DOWNLOADS_PER_PAGE: usize = 50;

/// The crt.sh client.
#[derive(Debug)]
pub struct CrtSh {
    base: String,
    http: HttpClient,
}

/// One row of crt.sh's JSON output (the fields we read).
#[derive(Debug, Deserialize)]
struct Row {
    id: u64,
}

impl CrtSh {
    /// A client for `base` (`https://crt.sh`).
    pub fn new(base: &str) -> Result<CrtSh, CtError> {
        let base = base.trim_end_matches('/').to_owned();
        check_url(&base).map_err(CtError::Config)?;
        Ok(CrtSh {
            base,
            http: HttpClient::new(Duration::from_secs(60)),
        })
    }

    async fn get(&self, url: &str) -> Result<hyper::body::Bytes, CtError> {
        self.http
            .get(url, &[])
            .await
            .map_err(|detail| CtError::Source {
                source_name: NAME,
                detail,
            })
    }
}

/// The ids of a listing, ascending, without repeats.
pub fn parse_ids(body: &[u8]) -> Result<Vec<u64>, CtError> {
    let rows: Vec<Row> = serde_json::from_slice(body).map_err(|e| CtError::malformed(NAME, e))?;
    let mut ids: Vec<u64> = rows.into_iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

#[async_trait::async_trait]
impl CtSource for CrtSh {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn poll(&self, domain: &str, cursor: Option<&str>) -> Result<Page, CtError> {
        let after: u64 = match cursor {
            Some(c) => c
                .parse()
                .map_err(|_| CtError::malformed(NAME, format!("cursor {c:?}")))?,
            None => 0,
        };
        let mut ids = Vec::new();
        for q in [domain.to_owned(), format!("%25.{domain}")] {
            let body = self
                .get(&format!("{}/?q={q}&output=json&exclude=expired", self.base))
                .await?;
            ids.extend(parse_ids(&body)?);
        }
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|id| *id > after);
        let more = ids.len() > DOWNLOADS_PER_PAGE;
        ids.truncate(DOWNLOADS_PER_PAGE);
        let mut entries = Vec::with_capacity(ids.len());
        for id in &ids {
            let pem = self.get(&format!("{}/?d={id}", self.base)).await?;
            let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .next()
                .ok_or_else(|| {
                    CtError::malformed(NAME, format!("certificate {id}: no PEM certificate"))
                })?
                .map_err(|e| CtError::malformed(NAME, format!("certificate {id}: {e}")))?;
            entries.push(
                crate::logged_from_der(id.to_string(), &der)
                    .map_err(|e| CtError::malformed(NAME, format!("certificate {id}: {e}")))?,
            );
        }
        Ok(Page {
            cursor: ids.last().map(u64::to_string).or(cursor.map(str::to_owned)),
            more,
            entries,
        })
    }
}
