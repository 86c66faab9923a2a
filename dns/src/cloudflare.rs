//! The Cloudflare v4 DNS API (what dstack deployments use today), with an API token.
//!
//! Zones are found by name (`GET /zones?name=`), longest suffix first, and cached. Records:
//! `GET/POST /zones/{id}/dns_records`, `DELETE /zones/{id}/dns_records/{record}`. Cloudflare
//! changes one record per call, so CAA replacement follows the guard-first order of
//! `gatehouse_caa::plan`. No live test is possible here (no internet); `tests/` runs this
//! code against a local server replaying the API's recorded response shapes.

use crate::{CaaRecord, DnsError, DnsProvider};
use bytes::Bytes;
use gatehouse_caa::plan::Step;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The public API endpoint.
pub const API: &str = "https://api.cloudflare.com/client/v4";
const TTL: u32 = 60;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A Cloudflare account reached with one API token (needs Zone:Read and DNS:Edit).
pub struct Cloudflare {
    api: String,
    token: String,
    client: Client<Https, Full<Bytes>>,
    zones: Mutex<HashMap<String, String>>,
    timeout: Duration,
}

impl std::fmt::Debug for Cloudflare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloudflare")
            .field("api", &self.api)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    #[serde(default)]
    result: Value,
}

#[derive(Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ZoneEntry {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct RecordEntry {
    id: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    data: Option<CaaData>,
}

#[derive(Deserialize)]
struct CaaData {
    flags: u8,
    tag: String,
    value: String,
}

impl Cloudflare {
    /// A client for `api` (normally [`API`]). Plain `http://` is accepted only for a loopback
    /// host (the token must not cross a network in the clear).
    pub fn new(api: &str, token: &str, timeout: Duration) -> Result<Cloudflare, DnsError> {
        let api = api.trim_end_matches('/').to_owned();
        let uri: hyper::Uri = api
            .parse()
            .map_err(|e| DnsError::Config(format!("cloudflare api {api:?}: {e}")))?;
        let loopback = matches!(uri.host(), Some("127.0.0.1" | "localhost" | "[::1]"));
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if loopback => {}
            _ => {
                return Err(DnsError::Config(format!(
                    "cloudflare api {api:?}: must be https (http only on loopback, for tests)"
                )))
            }
        }
        if token.trim().is_empty() {
            return Err(DnsError::Config("cloudflare: empty API token".into()));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_platform_verifier()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Cloudflare {
            api,
            token: token.trim().to_owned(),
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            zones: Mutex::new(HashMap::new()),
            timeout,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, DnsError> {
        let url = format!("{}{path}", self.api);
        let io = |reason: String| DnsError::Io {
            server: format!("cloudflare {method} {path}"),
            reason,
        };
        let request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| io(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| io(e.to_string()))?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| io(e.to_string()))?
                .to_bytes();
            Ok::<_, DnsError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| io(format!("no answer within {:?}", self.timeout)))??;
        let envelope: Envelope = serde_json::from_slice(&bytes).map_err(|e| DnsError::Api {
            api: format!("cloudflare {method} {path}"),
            status,
            message: format!("not an API response ({e})"),
        })?;
        if !envelope.success || !(200..300).contains(&status) {
            let message = envelope
                .errors
                .iter()
                .map(|m| format!("{} (code {})", m.message, m.code))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(DnsError::Api {
                api: format!("cloudflare {method} {path}"),
                status,
                message: if message.is_empty() {
                    "no error given".into()
                } else {
                    message
                },
            });
        }
        Ok(envelope.result)
    }

    /// The zone id holding `name`: the longest suffix Cloudflare knows.
    async fn zone_id(&self, name: &str) -> Result<String, DnsError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = name.split('.').collect();
        let suffixes: Vec<String> = (0..labels.len().saturating_sub(1))
            .map(|i| labels[i..].join("."))
            .collect();
        {
            let known = self.zones.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(id) = suffixes.iter().find_map(|s| known.get(s)) {
                return Ok(id.clone());
            }
        }
        for candidate in suffixes {
            let found = self
                .call(Method::GET, &format!("/zones?name={candidate}"), None)
                .await?;
            let zones: Vec<ZoneEntry> = serde_json::from_value(found).map_err(|e| self.shape(e))?;
            if let Some(z) = zones
                .into_iter()
                .find(|z| z.name.eq_ignore_ascii_case(&candidate))
            {
                self.zones
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(candidate, z.id.clone());
                return Ok(z.id);
            }
        }
        Err(DnsError::NoZone {
            name,
            zones: "none of its suffixes is a zone of this Cloudflare token".into(),
        })
    }

    async fn records(
        &self,
        zone: &str,
        kind: &str,
        name: &str,
    ) -> Result<Vec<RecordEntry>, DnsError> {
        let found = self
            .call(
                Method::GET,
                &format!("/zones/{zone}/dns_records?type={kind}&name={name}&per_page=100"),
                None,
            )
            .await?;
        serde_json::from_value(found).map_err(|e| self.shape(e))
    }

    async fn create(&self, zone: &str, record: Value) -> Result<(), DnsError> {
        self.call(
            Method::POST,
            &format!("/zones/{zone}/dns_records"),
            Some(record),
        )
        .await
        .map(drop)
    }

    async fn delete(&self, zone: &str, id: &str) -> Result<(), DnsError> {
        self.call(
            Method::DELETE,
            &format!("/zones/{zone}/dns_records/{id}"),
            None,
        )
        .await
        .map(drop)
    }

    fn shape(&self, e: serde_json::Error) -> DnsError {
        DnsError::BadResponse {
            server: "cloudflare".into(),
            reason: format!("unexpected result shape: {e}"),
        }
    }
}

/// Cloudflare returns TXT content with or without surrounding quotes.
fn txt_matches(content: &str, value: &str) -> bool {
    content == value || content.strip_prefix('"').and_then(|c| c.strip_suffix('"')) == Some(value)
}

fn caa_of(data: &CaaData) -> CaaRecord {
    CaaRecord::new(data.flags, &data.tag, &data.value)
}

#[async_trait::async_trait]
impl DnsProvider for Cloudflare {
    fn describe(&self) -> String {
        format!("cloudflare {}", self.api)
    }

    async fn add_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let zone = self.zone_id(name).await?;
        if self
            .records(&zone, "TXT", name)
            .await?
            .iter()
            .any(|r| txt_matches(&r.content, value))
        {
            return Ok(());
        }
        self.create(
            &zone,
            json!({"type": "TXT", "name": name, "content": value, "ttl": TTL}),
        )
        .await
    }

    async fn remove_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let zone = self.zone_id(name).await?;
        for r in self.records(&zone, "TXT", name).await? {
            if txt_matches(&r.content, value) {
                self.delete(&zone, &r.id).await?;
            }
        }
        Ok(())
    }

    async fn list_caa(&self, name: &str) -> Result<Vec<CaaRecord>, DnsError> {
        let zone = self.zone_id(name).await?;
        Ok(self
            .records(&zone, "CAA", name)
            .await?
            .iter()
            .filter_map(|r| r.data.as_ref().map(caa_of))
            .collect())
    }

    /// One call per step, in the plan's order (guards first).
    async fn apply_caa(&self, name: &str, steps: &[Step]) -> Result<(), DnsError> {
        let zone = self.zone_id(name).await?;
        for step in steps {
            match step {
                Step::Add(r) => {
                    let value = String::from_utf8_lossy(&r.value);
                    self.create(
                        &zone,
                        json!({"type": "CAA", "name": name, "ttl": TTL,
                               "data": {"flags": r.flags, "tag": r.tag, "value": value}}),
                    )
                    .await?
                }
                Step::Remove(r) => {
                    for existing in self.records(&zone, "CAA", name).await? {
                        if existing.data.as_ref().map(caa_of).as_ref() == Some(r) {
                            self.delete(&zone, &existing.id).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
