//! Collateral from a PCCS (Intel's Provisioning Certification Caching Service API v4, as
//! served by Intel's PCS, Phala's PCCS or a self-hosted one), cached per platform until its
//! earliest `nextUpdate`.
//!
//! For a TDX quote: the PCK chain comes from the quote itself (certification data type 5);
//! its leaf's SGX extension gives the FMSPC and its issuer the CA (`processor`/`platform`).
//! Then `pckcrl`, `tdx/.../tcb`, `tdx/.../qe/identity` and `rootcacrl`. The signed JSON
//! documents are kept byte for byte as served (their signatures cover those bytes).

use crate::collateral::Collateral;
use crate::AttestError;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Phala Network's public PCCS (the default; Intel's PCS rate-limits harder).
pub const DEFAULT_PCCS: &str = "https://pccs.phala.network";
/// Refresh this long before the collateral's earliest nextUpdate.
const REFRESH_MARGIN: u64 = 3600;

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// Where collateral for a quote comes from: the quote provider's own (the simulator vouches
/// for its mock PKI), else a PCCS.
#[derive(Debug)]
pub struct CollateralSource {
    own: Option<Collateral>,
    pccs: Pccs,
}

impl CollateralSource {
    /// `own` when the local provider has collateral of its own, else `pccs`.
    pub fn new(own: Option<Collateral>, pccs: Pccs) -> CollateralSource {
        CollateralSource { own, pccs }
    }

    /// Collateral to verify `quote` with at `now`.
    pub async fn for_quote(&self, quote: &[u8], now: u64) -> Result<Collateral, AttestError> {
        match &self.own {
            Some(c) => Ok(c.clone()),
            None => self.pccs.collateral(quote, now).await,
        }
    }
}

/// How long a failed fetch is remembered: a quote naming a platform the PCCS does not know
/// (anyone can craft one) costs one fetch per minute, not one per request.
const FAILURE_TTL: Duration = Duration::from_secs(60);
/// Fetches for platforms not in the cache, at most, per minute.
const FETCHES_PER_MINUTE: u32 = 30;

/// A platform: its FMSPC and the CA that issued its PCK certificate.
type Platform = (String, &'static str);

/// A PCCS client with a per-(FMSPC, CA) cache, failures cached too, and a bound on how often
/// it fetches for platforms it has not seen.
pub struct Pccs {
    base: String,
    client: Client<Https, Empty<Bytes>>,
    timeout: Duration,
    cache: Mutex<HashMap<Platform, Collateral>>,
    /// When a platform's fetch last failed, and why.
    failures: Mutex<HashMap<Platform, (std::time::Instant, String)>>,
    /// Window start and fetches in it.
    fetches: Mutex<(std::time::Instant, u32)>,
}

impl std::fmt::Debug for Pccs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pccs({})", self.base)
    }
}

fn err(m: impl Into<String>) -> AttestError {
    AttestError::Collateral(m.into())
}

#[derive(serde::Deserialize)]
struct Signed<'a> {
    #[serde(borrow, alias = "tcbInfo", alias = "enclaveIdentity")]
    body: &'a serde_json::value::RawValue,
    signature: String,
}

impl Pccs {
    /// A client for `base` (https; plain http only on loopback, for tests).
    pub fn new(base: &str, timeout: Duration) -> Result<Pccs, AttestError> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: hyper::Uri = base
            .parse()
            .map_err(|e| err(format!("PCCS URL {base:?}: {e}")))?;
        let loopback = matches!(uri.host(), Some("127.0.0.1" | "localhost" | "[::1]"));
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if loopback => {}
            _ => return Err(err(format!("PCCS URL {base:?} must be https"))),
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_platform_verifier()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Pccs {
            base,
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            timeout,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            fetches: Mutex::new((std::time::Instant::now(), 0)),
        })
    }

    async fn get(&self, path: &str) -> Result<(Bytes, hyper::HeaderMap), AttestError> {
        let url = format!("{}/{path}", self.base);
        let req = hyper::Request::get(&url)
            .body(Empty::new())
            .map_err(|e| err(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| err(format!("GET {url}: {e}")))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| err(format!("GET {url}: {e}")))?
                .to_bytes();
            if !status.is_success() {
                return Err(err(format!("GET {url}: HTTP {status}")));
            }
            Ok((body, headers))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| err(format!("GET {url}: no answer within {:?}", self.timeout)))?
    }

    /// Collateral for `quote`, from the cache while it is fresh.
    pub async fn collateral(&self, quote: &[u8], now: u64) -> Result<Collateral, AttestError> {
        let (fmspc, ca) = platform_of(quote)?;
        let key = (fmspc.clone(), ca);
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if c.window().is_ok_and(|w| now + REFRESH_MARGIN < w.expires.0) {
                return Ok(c.clone());
            }
        }
        if let Some((at, e)) = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if at.elapsed() < FAILURE_TTL {
                return Err(err(format!(
                    "{e} (failed {}s ago; retried after {FAILURE_TTL:?})",
                    at.elapsed().as_secs()
                )));
            }
        }
        {
            let mut w = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
            if w.0.elapsed() >= Duration::from_secs(60) {
                *w = (std::time::Instant::now(), 0);
            }
            if w.1 >= FETCHES_PER_MINUTE {
                return Err(err(format!(
                    "more than {FETCHES_PER_MINUTE} collateral fetches for new platforms this minute"
                )));
            }
            w.1 += 1;
        }
        let c = match self.fetch(&fmspc, ca).await {
            Ok(c) => c,
            Err(e) => {
                let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                f.retain(|_, (at, _)| at.elapsed() < FAILURE_TTL);
                f.insert(key, (std::time::Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, c.clone());
        Ok(c)
    }

    /// Fetches the collateral of one platform (FMSPC, CA) for TDX.
    pub async fn fetch(&self, fmspc: &str, ca: &str) -> Result<Collateral, AttestError> {
        let (pck_crl, h) = self
            .get(&format!("sgx/certification/v4/pckcrl?ca={ca}&encoding=der"))
            .await?;
        let pck_crl_issuer_chain = header(&h, &["SGX-PCK-CRL-Issuer-Chain"])?;
        let (tcb, h) = self
            .get(&format!("tdx/certification/v4/tcb?fmspc={fmspc}"))
            .await?;
        let tcb_info_issuer_chain =
            header(&h, &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"])?;
        let (qe, h) = self.get("tdx/certification/v4/qe/identity").await?;
        let qe_identity_issuer_chain = header(&h, &["SGX-Enclave-Identity-Issuer-Chain"])?;
        let (root_crl, _) = self.get("sgx/certification/v4/rootcacrl").await?;
        let (tcb_info, tcb_info_signature) = signed(&tcb, "TCB info")?;
        let (qe_identity, qe_identity_signature) = signed(&qe, "QE identity")?;
        Ok(Collateral {
            pck_crl_issuer_chain,
            root_ca_crl: der_or_hex(&root_crl),
            pck_crl: der_or_hex(&pck_crl),
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
        })
    }
}

/// The FMSPC (upper-case hex) and PCK CA (`processor`/`platform`) of a quote's PCK leaf.
pub fn platform_of(quote: &[u8]) -> Result<(String, &'static str), AttestError> {
    let parsed = dcap_qvl::quote::Quote::parse(quote)
        .map_err(|e| AttestError::malformed("quote", format!("{e:#}")))?;
    let chain = parsed
        .raw_cert_chain()
        .map_err(|e| AttestError::malformed("quote", format!("PCK chain: {e:#}")))?;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(chain)
        .next()
        .ok_or_else(|| AttestError::malformed("quote", "no PCK certificate"))?
        .map_err(|e| AttestError::malformed("quote", format!("PCK certificate: {e}")))?;
    let ext = dcap_qvl::intel::parse_pck_extension(&leaf)
        .map_err(|e| AttestError::malformed("PCK certificate", format!("{e:#}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| AttestError::malformed("PCK certificate", e))?;
    let ca = match cert.issuer().to_string().contains("Platform") {
        true => "platform",
        false => "processor",
    };
    Ok((crate::hex::encode(&ext.fmspc).to_ascii_uppercase(), ca))
}

use rustls_pki_types::pem::PemObject as _;

fn header(h: &hyper::HeaderMap, names: &[&str]) -> Result<String, AttestError> {
    let raw = names
        .iter()
        .find_map(|n| h.get(*n))
        .ok_or_else(|| err(format!("the PCCS answer lacks the {} header", names[0])))?;
    percent_decode(raw.as_bytes()).ok_or_else(|| err(format!("{}: bad percent-encoding", names[0])))
}

fn percent_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The exact bytes of the signed document and its signature.
fn signed(body: &[u8], what: &str) -> Result<(String, Vec<u8>), AttestError> {
    let s: Signed<'_> = serde_json::from_slice(body).map_err(|e| err(format!("{what}: {e}")))?;
    let sig = crate::hex::decode(&s.signature)
        .ok_or_else(|| err(format!("{what}: signature is not hex")))?;
    Ok((s.body.get().to_owned(), sig))
}

/// PCCS serves CRLs as DER, or as hex text (`rootcacrl`).
fn der_or_hex(body: &[u8]) -> Vec<u8> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|t| crate::hex::decode(t.trim()))
        .unwrap_or_else(|| body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{Simulator, SimulatorConfig};
    use crate::QuoteProvider;
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;

    fn encode_header(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// A PCCS on loopback serving `c` in the v4 API's shapes; counts requests.
    async fn serve(c: Collateral) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let c = c.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let path = req.uri().path().to_owned();
                            let query = req.uri().query().unwrap_or("").to_owned();
                            let c = c.clone();
                            async move {
                                let mut r = hyper::Response::builder();
                                let body: Vec<u8> = match path.as_str() {
                                    "/sgx/certification/v4/pckcrl"
                                        if query.contains("ca=platform") =>
                                    {
                                        r = r.header(
                                            "SGX-PCK-CRL-Issuer-Chain",
                                            encode_header(&c.pck_crl_issuer_chain),
                                        );
                                        c.pck_crl.clone()
                                    }
                                    "/tdx/certification/v4/tcb"
                                        if query == "fmspc=000000000000" =>
                                    {
                                        r = r.header(
                                            "TCB-Info-Issuer-Chain",
                                            encode_header(&c.tcb_info_issuer_chain),
                                        );
                                        format!(
                                            r#"{{"tcbInfo":{},"signature":"{}"}}"#,
                                            c.tcb_info,
                                            crate::hex::encode(&c.tcb_info_signature)
                                        )
                                        .into_bytes()
                                    }
                                    "/tdx/certification/v4/qe/identity" => {
                                        r = r.header(
                                            "SGX-Enclave-Identity-Issuer-Chain",
                                            encode_header(&c.qe_identity_issuer_chain),
                                        );
                                        format!(
                                            r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
                                            c.qe_identity,
                                            crate::hex::encode(&c.qe_identity_signature)
                                        )
                                        .into_bytes()
                                    }
                                    "/sgx/certification/v4/rootcacrl" => {
                                        crate::hex::encode(&c.root_ca_crl).into_bytes()
                                    }
                                    _ => {
                                        r = r.status(404);
                                        Vec::new()
                                    }
                                };
                                Ok::<_, std::convert::Infallible>(
                                    r.body(Full::new(Bytes::from(body))).unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (base, hits)
    }

    #[tokio::test]
    async fn fetches_caches_and_verifies() {
        let sim = Simulator::new(SimulatorConfig::default()).unwrap();
        let served = sim.collateral().unwrap();
        let (base, hits) = serve(served.clone()).await;
        let pccs = Pccs::new(&base, Duration::from_secs(5)).unwrap();
        let ev = sim.quote([3; 64]).await.unwrap();
        // The simulated PCK is issued by a "PCK Platform CA", as on multi-package servers.
        assert_eq!(
            platform_of(&ev.quote).unwrap(),
            ("000000000000".into(), "platform")
        );
        let now = crate::unix_now();
        let fetched = pccs.collateral(&ev.quote, now).await.unwrap();
        assert_eq!(fetched, served, "byte for byte, signed JSON included");
        crate::verify::verify_quote(&ev, &fetched, now, true).unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::Relaxed), 4);
        pccs.collateral(&ev.quote, now).await.unwrap();
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::Relaxed),
            4,
            "served from the cache"
        );
    }

    /// Issue 16 §8: a failed fetch is remembered, so a quote naming a platform the PCCS does
    /// not serve costs one fetch, not one per registration attempt.
    #[tokio::test]
    async fn security_failed_fetches_are_cached() {
        let sim = Simulator::new(SimulatorConfig::default()).unwrap();
        let (base, hits) = serve(sim.collateral().unwrap()).await;
        let pccs = Pccs::new(&format!("{base}/nowhere"), Duration::from_secs(5)).unwrap();
        let ev = sim.quote([3; 64]).await.unwrap();
        let now = crate::unix_now();
        let first = pccs.collateral(&ev.quote, now).await.unwrap_err();
        assert!(first.to_string().contains("HTTP 404"), "{first}");
        let after_first = hits.load(std::sync::atomic::Ordering::Relaxed);
        for _ in 0..5 {
            let e = pccs.collateral(&ev.quote, now).await.unwrap_err();
            assert!(e.to_string().contains("failed 0s ago"), "{e}");
        }
        assert_eq!(hits.load(std::sync::atomic::Ordering::Relaxed), after_first);
    }

    #[tokio::test]
    async fn errors_name_the_url_and_header() {
        let sim = Simulator::new(SimulatorConfig::default()).unwrap();
        let (base, _) = serve(sim.collateral().unwrap()).await;
        let pccs = Pccs::new(&base, Duration::from_secs(5)).unwrap();
        let e = pccs.fetch("B0C06F000000", "platform").await.unwrap_err();
        assert!(
            e.to_string().contains("fmspc=B0C06F000000: HTTP 404"),
            "{e}"
        );
        let e = pccs.fetch("000000000000", "processor").await.unwrap_err();
        assert!(e.to_string().contains("ca=processor"), "{e}");
        assert!(Pccs::new("http://pccs.example", Duration::from_secs(1)).is_err());
    }
}
