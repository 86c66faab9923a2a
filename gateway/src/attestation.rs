//! Attestation in the gateway: the quote provider and sealer `[tee]` chooses, and the
//! attestation bundle served on terminating listeners.
//!
//! The bundle is served to clients that offer ALPN [`ATTEST_ALPN`] on any name whose
//! certificate the gateway holds: they get the same certificate as every other client of that
//! name, then an HTTP/1.1 exchange with the gateway itself (`GET
//! /.well-known/gatehouse/attestation`), so the key they saw and the bundle come over one
//! connection. The apps' traffic is never inspected for it (see ARCHITECTURE.md).

use crate::app::StartError;
use crate::conn::Shared;
use crate::terminate::certs::KeyOrigin;
use bytes::Bytes;
use gatehouse_attest::bundle::{self, Bundle, Claims, KeyClaim, SpkiHashes};
use gatehouse_attest::pccs::CollateralSource;
use gatehouse_attest::provider::{self, Probe, ProviderChoice};
use gatehouse_attest::simulator::SimulatorConfig;
use gatehouse_attest::statement::{Signer, Statement};
use gatehouse_attest::{eventlog::Event, AttestError, QuoteProvider};
use gatehouse_config::{Config, Sealing, TeeConfig, TeeProvider};
use gatehouse_store::{AesGcmSealer, Sealer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The ALPN protocol a verifier offers to fetch the bundle over the connection it checks.
pub const ATTEST_ALPN: &[u8] = b"gatehouse-attest/1";
/// Fresh (nonce) quotes allowed per second, process-wide.
const FRESH_PER_SECOND: u32 = 4;
/// Fresh (nonce) quotes allowed per second to one client address (an IPv6 /64).
const FRESH_PER_CLIENT_PER_SECOND: u32 = 1;
/// The context of the statement answering `?challenge=`: the payload is the challenge text.
pub const FRESHNESS_CONTEXT: &str = "gatehouse-freshness";

/// What `[tee]` gave: the attestor (absent with `provider = "none"`) and the sealer.
pub struct Tee {
    /// Quotes, bundles, signatures.
    pub attestor: Option<Arc<Attestor>>,
    /// Seals keys before they reach the store.
    pub sealer: Arc<dyn Sealer>,
}

fn fail(e: impl std::fmt::Display) -> StartError {
    StartError::Tee(e.to_string())
}

/// The simulated TD of this build: configured measurements, and one runtime event naming
/// the Gatehouse version (so RTMR3 replay is exercised end to end).
fn simulator_config(tee: &TeeConfig) -> SimulatorConfig {
    let mut c = SimulatorConfig::default();
    let s = &tee.simulator;
    let hex48 = |v: &Option<String>| v.as_deref().and_then(gatehouse_attest::hex::decode_array);
    if let Some(m) = hex48(&s.mrtd) {
        c.mrtd = m;
    }
    for (i, v) in [&s.rtmr0, &s.rtmr1, &s.rtmr2].into_iter().enumerate() {
        if let Some(m) = hex48(v) {
            c.rtmrs[i] = m;
        }
    }
    c.debug = s.debug;
    c.events = vec![Event::runtime(
        "gatehouse-version",
        env!("CARGO_PKG_VERSION").as_bytes(),
    )];
    c
}

/// The provider choice `[tee]` names.
fn choice(tee: &TeeConfig) -> (Option<ProviderChoice>, Probe) {
    let mut probe = Probe::default();
    if let Some(s) = &tee.dstack_socket {
        probe.dstack_sockets = vec![s.clone()];
    }
    let c = match tee.provider {
        TeeProvider::None => None,
        TeeProvider::Auto => Some(ProviderChoice::Auto),
        TeeProvider::ConfigfsTsm => Some(ProviderChoice::ConfigfsTsm(tee.configfs_path.clone())),
        TeeProvider::Dstack => Some(ProviderChoice::Dstack(
            probe
                .dstack_sockets
                .iter()
                .find(|p| p.exists())
                .or(probe.dstack_sockets.first())
                .cloned()
                .unwrap_or_default(),
        )),
        TeeProvider::Simulator => Some(ProviderChoice::Simulator(Box::new(simulator_config(tee)))),
    };
    (c, probe)
}

/// The sealer `[tee] sealing` asks for (also used by commands that read the store).
pub async fn sealer(config: &Config, state_dir: &Path) -> Result<Arc<dyn Sealer>, StartError> {
    let tee = &config.tee;
    if tee.sealing == Sealing::Development {
        let dir = config.store.path.as_deref().unwrap_or(state_dir);
        std::fs::create_dir_all(dir).map_err(fail)?;
        let path = dir.join("seal.key");
        let s = AesGcmSealer::load_or_create(&path).map_err(fail)?;
        tracing::warn!(
            "DEVELOPMENT SEALER: keys are sealed with the key in {} (anyone who can read it \
             can unseal them)",
            path.display()
        );
        return Ok(Arc::new(s));
    }
    let (choice, probe) = choice(tee);
    let resolved = match choice {
        Some(ProviderChoice::Auto) => probe.real_tee(),
        other => other,
    };
    match resolved {
        Some(ProviderChoice::Simulator(c)) => {
            let s = gatehouse_attest::seal::from_simulator(&c).map_err(fail)?;
            tracing::warn!(
                "SIMULATED SEALING: the sealing key is derived from the simulator's public seed \
                 and measurements; it protects nothing"
            );
            Ok(Arc::new(s))
        }
        Some(ProviderChoice::Dstack(socket)) => {
            let agent = gatehouse_attest::dstack::DstackAgent::new(socket);
            Ok(Arc::new(
                gatehouse_attest::seal::from_dstack(&agent)
                    .await
                    .map_err(fail)?,
            ))
        }
        Some(ProviderChoice::ConfigfsTsm(_)) => Err(fail(
            "tee.sealing = \"tee\": bare TDX (configfs-tsm) has no sealing key source; run under \
             dstack, or set sealing = \"development\" and protect the state directory",
        )),
        Some(ProviderChoice::Auto) | None => Err(fail(
            "tee.sealing = \"tee\" needs a TEE and this machine has none (no configfs-tsm, no \
             dstack agent): add `[tee] provider = \"none\"` to run as a plain router without \
             attestation, or `provider = \"simulator\"` to try it with simulated quotes",
        )),
    }
}

/// A quote provider and the collateral source for quotes.
pub type Quoting = (Arc<dyn QuoteProvider>, Arc<CollateralSource>);

/// The quote provider `[tee]` names (`None` for `provider = "none"`; an error when `auto`
/// finds no TEE), and where collateral for quotes comes from.
pub fn quote_provider(tee: &TeeConfig) -> Result<Option<Quoting>, StartError> {
    let (choice, probe) = choice(tee);
    let Some(choice) = choice else {
        return Ok(None);
    };
    let provider = provider::open(&choice, &probe).map_err(fail)?;
    let pccs =
        gatehouse_attest::pccs::Pccs::new(&tee.pccs_url, Duration::from_secs(30)).map_err(fail)?;
    let collateral = Arc::new(CollateralSource::new(provider.collateral(), pccs));
    Ok(Some((provider, collateral)))
}

/// Opens `[tee]`: the provider (failing when `auto` finds no TEE), signer and sealer.
pub async fn open(config: &Config, state_dir: &Path) -> Result<Tee, StartError> {
    let sealer = sealer(config, state_dir).await?;
    let Some((provider, collateral)) = quote_provider(&config.tee)? else {
        tracing::warn!("NO ATTESTATION: tee.provider = \"none\"; no bundle is served");
        return Ok(Tee {
            attestor: None,
            sealer,
        });
    };
    tracing::info!(provider = %provider.describe(), sealing = sealer.kind(), "attestation on");
    let mut domains = config.proxy.base_domains.clone();
    if let Some(acme) = &config.acme {
        domains.extend(acme.domains.iter().cloned());
    }
    let attestor = Attestor {
        collateral,
        provider,
        signer: Signer::generate().map_err(fail)?,
        domains,
        sealing: sealer.kind(),
        dstack_acme_info: config.tee.dstack_acme_info,
        cached: tokio::sync::Mutex::new(None),
        fresh: Mutex::new((Instant::now(), 0)),
        fresh_by_client: Mutex::new(HashMap::new()),
        seen_spki: Mutex::new(Vec::new()),
    };
    Ok(Tee {
        attestor: Some(Arc::new(attestor)),
        sealer,
    })
}

/// Quotes the claims, caches the bundle, signs statements.
pub struct Attestor {
    provider: Arc<dyn QuoteProvider>,
    /// The provider's own collateral (the simulator's), else a PCCS.
    collateral: Arc<CollateralSource>,
    signer: Signer,
    domains: Vec<String>,
    sealing: &'static str,
    /// Whether `/.dstack/acme-info` is served too.
    pub dstack_acme_info: bool,
    /// The last static bundle and the claims it was made for (issued_at aside); its lock
    /// also serialises quoting: one quote at a time.
    cached: tokio::sync::Mutex<Option<(serde_json::Value, Bundle)>>,
    /// Fresh-quote rate: window start, count in it.
    fresh: Mutex<(Instant, u32)>,
    /// The same, per client address.
    fresh_by_client: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Every SPKI hash served since start, oldest first.
    seen_spki: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Attestor({})", self.provider.describe())
    }
}

impl Attestor {
    /// The quote provider (the VPC's RA-TLS certificate is quoted by it too).
    pub fn provider(&self) -> &Arc<dyn QuoteProvider> {
        &self.provider
    }

    /// Where collateral for quotes comes from (the provider's own, else the PCCS).
    pub fn collateral_source(&self) -> &Arc<CollateralSource> {
        &self.collateral
    }
}

/// Why a bundle request was not answered.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Too many nonce requests.
    #[error("too many fresh quotes requested; retry in a second, or ask ?challenge=")]
    RateLimited,
    /// The nonce is not 1-64 bytes of hex.
    #[error("nonce must be 2-128 hex digits")]
    BadNonce,
    /// Quoting failed.
    #[error("{0}")]
    Attest(#[from] AttestError),
}

impl Attestor {
    /// The claims as of now (issued_at and nonce left for the caller).
    fn claims(&self, shared: &Shared) -> Result<Claims, AttestError> {
        let mut keys = Vec::new();
        for (leaf, origin) in shared.tls.resolver.leaves() {
            let (origin, sealing) = match origin {
                KeyOrigin::Generated => (bundle::ORIGIN_TEE, "memory"),
                KeyOrigin::Sealed => (bundle::ORIGIN_TEE, self.sealing),
                KeyOrigin::Imported => (bundle::ORIGIN_IMPORTED, "file"),
            };
            keys.push(KeyClaim {
                spki_sha256: bundle::cert_spki_sha256(&leaf)?,
                origin: origin.into(),
                sealing: sealing.into(),
            });
        }
        keys.sort_by(|a, b| a.spki_sha256.cmp(&b.spki_sha256));
        keys.dedup_by(|a, b| a.spki_sha256 == b.spki_sha256);
        let current: Vec<String> = keys.iter().map(|k| k.spki_sha256.clone()).collect();
        let previous = {
            let mut seen = self.seen_spki.lock().unwrap_or_else(|p| p.into_inner());
            for h in &current {
                if !seen.contains(h) {
                    seen.push(h.clone());
                }
            }
            seen.iter()
                .filter(|h| !current.contains(h))
                .cloned()
                .collect()
        };
        let acme = shared.metrics.acme.get();
        let account = acme.and_then(|s| s.account_uri.get().cloned());
        let caa = acme
            .map(|s| {
                let verdicts = s.caa_verdicts.lock().unwrap_or_else(|p| p.into_inner());
                verdicts.iter().map(|(n, v)| format!("{n}: {v}")).collect()
            })
            .unwrap_or_default();
        Ok(Claims {
            domains: self.domains.clone(),
            spki_sha256: SpkiHashes {
                current,
                next: Vec::new(),
                previous,
            },
            keys,
            acme_account_uri: account,
            signing_keys: vec![self.signer.claim()],
            caa,
            sealing: self.sealing.into(),
            ct: shared.metrics.ct.get().map(|m| {
                let s = m.status();
                bundle::CtClaim {
                    status: s.status.into(),
                    checked_at: s.checked_at,
                    alerts: s.alerts,
                }
            }),
            channel: shared.channel.get().and_then(|c| c.claim()),
            nonce: None,
            issued_at: 0,
        })
    }

    async fn quote(&self, shared: &Shared, claims: &Claims) -> Result<Bundle, AttestError> {
        let value = serde_json::to_value(claims).map_err(|e| AttestError::Claims(e.to_string()))?;
        let report_data = bundle::report_data(&value)?;
        let evidence = self.provider.quote(report_data).await?;
        // Verifiers can fetch their own (`gatehouse verify --pccs`): serve the quote even
        // when the PCCS is down.
        let collateral = match self
            .collateral
            .for_quote(&evidence.quote, gatehouse_attest::unix_now())
            .await
        {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("collateral for the bundle: {e}");
                None
            }
        };
        Ok(Bundle {
            version: 1,
            evidence,
            report_data: gatehouse_attest::hex::encode(&report_data),
            claims: value,
            collateral,
            certificates: certificate_chains(shared),
        })
    }

    /// The bundle: the cached one while the claims are unchanged (re-quoted when keys or the
    /// account change), or a fresh one binding `nonce` (rate-limited).
    pub async fn bundle(
        &self,
        shared: &Shared,
        nonce: Option<(&str, IpAddr)>,
    ) -> Result<Bundle, BundleError> {
        let mut claims = self.claims(shared)?;
        let mut cached = self.cached.lock().await; // one quote at a time
        if let Some((n, client)) = nonce {
            if !valid_hex(n) {
                return Err(BundleError::BadNonce);
            }
            self.take_fresh_slot(client)?;
            claims.nonce = Some(n.to_ascii_lowercase());
            claims.issued_at = gatehouse_attest::unix_now();
            return Ok(self.quote(shared, &claims).await?);
        }
        let key = serde_json::to_value(&claims).map_err(|e| AttestError::Claims(e.to_string()))?;
        if let Some((k, b)) = cached.as_ref() {
            if *k == key {
                return Ok(b.clone());
            }
        }
        claims.issued_at = gatehouse_attest::unix_now();
        let b = self.quote(shared, &claims).await?;
        tracing::info!(
            keys = claims.spki_sha256.current.len(),
            account = claims.acme_account_uri.as_deref().unwrap_or("-"),
            "attestation bundle re-quoted"
        );
        *cached = Some((key, b.clone()));
        Ok(b)
    }

    /// Takes one fresh quote from `client`'s allowance, then from the process's.
    fn take_fresh_slot(&self, client: IpAddr) -> Result<(), BundleError> {
        let second = Duration::from_secs(1);
        let take = |w: &mut (Instant, u32), limit: u32| {
            if w.0.elapsed() >= second {
                *w = (Instant::now(), 0);
            }
            (w.1 < limit).then(|| w.1 += 1).is_some()
        };
        {
            let mut by_client = self
                .fresh_by_client
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if by_client.len() >= 10_000 {
                by_client.retain(|_, w| w.0.elapsed() < second);
            }
            let key = crate::admission::source_key(client);
            let w = by_client.entry(key).or_insert((Instant::now(), 0));
            if !take(w, FRESH_PER_CLIENT_PER_SECOND) {
                return Err(BundleError::RateLimited);
            }
        }
        let mut w = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        match take(&mut w, FRESH_PER_SECOND) {
            true => Ok(()),
            false => Err(BundleError::RateLimited),
        }
    }

    /// Signs `payload` under `context` with the attested key.
    pub async fn sign(
        &self,
        shared: &Shared,
        context: &str,
        payload: &[u8],
    ) -> Result<Statement, BundleError> {
        let attestation = self.bundle(shared, None).await?;
        Ok(self
            .signer
            .sign(context, payload, gatehouse_attest::unix_now(), attestation)?)
    }

    /// The response body for a bundle path; `None` for other paths.
    ///
    /// `?nonce=<hex>` quotes afresh with the nonce in the claims (one per second per client,
    /// four per second in all); `?challenge=<hex>` answers, without a quote, a statement
    /// signed by the attested key over the challenge text (context [`FRESHNESS_CONTEXT`]),
    /// carrying the cached bundle: the same proof of liveness, for any number of clients.
    pub async fn answer(
        &self,
        shared: &Shared,
        client: IpAddr,
        path: &str,
        query: Option<&str>,
    ) -> Option<(u16, Bytes)> {
        let param =
            |name: &str| query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(name)));
        let dstack = path == "/.dstack/acme-info" && self.dstack_acme_info;
        if path != bundle::WELL_KNOWN_PATH && !dstack {
            return None;
        }
        if let Some(challenge) = param("challenge=").filter(|_| !dstack) {
            if !valid_hex(challenge) {
                return Some((400, Bytes::from("400 challenge must be 2-128 hex digits\n")));
            }
            return Some(
                match self
                    .sign(shared, FRESHNESS_CONTEXT, challenge.as_bytes())
                    .await
                {
                    Ok(s) => match serde_json::to_vec_pretty(&s) {
                        Ok(json) => (200, Bytes::from(json)),
                        Err(e) => (500, Bytes::from(format!("{e}\n"))),
                    },
                    Err(e) => {
                        tracing::error!("freshness statement: {e}");
                        (
                            503,
                            Bytes::from(format!("503 attestation unavailable: {e}\n")),
                        )
                    }
                },
            );
        }
        let nonce = param("nonce=").map(|n| (n, client));
        let result = self.bundle(shared, nonce).await;
        Some(match result {
            Ok(b) if dstack => (200, Bytes::from(acme_info(&b).to_string())),
            Ok(b) => match serde_json::to_vec_pretty(&b) {
                Ok(json) => (200, Bytes::from(json)),
                Err(e) => (500, Bytes::from(format!("{e}\n"))),
            },
            Err(BundleError::RateLimited) => (429, Bytes::from("429 too many fresh quotes\n")),
            Err(BundleError::BadNonce) => {
                (400, Bytes::from("400 nonce must be 2-128 hex digits\n"))
            }
            Err(e) => {
                tracing::error!("attestation bundle: {e}");
                (
                    503,
                    Bytes::from(format!("503 attestation unavailable: {e}\n")),
                )
            }
        })
    }
}

/// The chains served now, base64 DER, leaf first, sorted (the bundle's `certificates`).
fn certificate_chains(shared: &Shared) -> Vec<Vec<String>> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut chains: Vec<Vec<String>> = shared
        .tls
        .resolver
        .chains()
        .iter()
        .map(|chain| chain.iter().map(|c| b64.encode(c.as_ref())).collect())
        .collect();
    chains.sort();
    chains
}

/// CORS for the bundle: any page may read it (it is public, and a page that verifies a
/// domain's keys is usually served from another origin).
pub const CORS_HEADERS: [(&str, &str); 4] = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "GET, HEAD, OPTIONS"),
    ("access-control-allow-headers", "*"),
    ("access-control-max-age", "86400"),
];

/// 2-128 hex digits (1-64 bytes).
fn valid_hex(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && gatehouse_attest::hex::decode(s).is_some()
}

/// dstack's `/.dstack/acme-info` shape, filled from the bundle: one quote binds the account
/// and keys here (the claims), so `account_quote` and every `quoted_hist_keys` entry carry
/// the bundle's quote and a verifier checks the claims binding instead of per-key tags.
fn acme_info(b: &Bundle) -> serde_json::Value {
    let claims = &b.claims;
    let quote = gatehouse_attest::hex::encode(&b.evidence.quote);
    let keys: Vec<serde_json::Value> = claims["spki_sha256"]["current"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            claims["spki_sha256"]["previous"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .map(|h| serde_json::json!({"spki_sha256": h, "quote": quote}))
        .collect();
    serde_json::json!({
        "account_uri": claims["acme_account_uri"],
        "account_quote": quote,
        "quoted_hist_keys": keys,
        "gatehouse_bundle": b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_attest::provider::{Evidence, TeeKind};

    #[test]
    fn acme_info_carries_the_account_every_key_and_the_bundle() {
        let claims = serde_json::json!({
            "domains": ["gw.test"],
            "spki_sha256": {"current": ["aa"], "next": [], "previous": ["bb"]},
            "acme_account_uri": "https://ca.test/acct/1",
            "issued_at": 1
        });
        let b = Bundle {
            version: 1,
            evidence: Evidence {
                tee: TeeKind::Simulated,
                quote: vec![1, 2],
                event_log: Vec::new(),
            },
            report_data: String::new(),
            claims,
            collateral: None,
            certificates: Vec::new(),
        };
        let info = acme_info(&b);
        assert_eq!(info["account_uri"], "https://ca.test/acct/1");
        assert_eq!(info["account_quote"], "0102");
        let keys: Vec<_> = info["quoted_hist_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["spki_sha256"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["aa", "bb"]);
        assert_eq!(info["gatehouse_bundle"]["claims"], b.claims);
    }
}
