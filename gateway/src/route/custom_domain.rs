//! Custom domains: `<txt_prefix>.<domain>  TXT  "<app-id>[:<port>][;mode=passthrough|terminate|h2]"`.
//!
//! Answers are cached in `moka` for the record's TTL clamped to `[min_ttl, max_ttl]`; "no such
//! record" and unusable records for `negative_ttl`; lookup failures (timeout, SERVFAIL) for
//! `failure_ttl`. Concurrent connections for one uncached name share one lookup
//! (`try_get_with`); at most `max_concurrent_lookups` run at once across all names, and at most
//! `max_lookups_per_zone` under one zone (random names under a black-holed zone cannot take
//! every slot). With `dns_over_tls` the resolvers are reached over TLS and their certificate
//! authenticates every answer: in a CVM the host answers plain DNS and could otherwise move a
//! custom domain to another app.

use super::name::Mode;
use gatehouse_config::{app_id_problem, CustomDomainsConfig};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Where a custom domain's TXT record sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomTarget {
    /// App id.
    pub app: String,
    /// Port, or the app's default.
    pub port: Option<u16>,
    /// Terminate (default), passthrough or h2.
    pub mode: Mode,
}

/// Why a custom domain does not route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomDomainError {
    /// Custom domains are disabled in the config.
    #[error("custom domains are disabled")]
    Disabled,
    /// No TXT record at the name (cached briefly).
    #[error("no TXT record at {0}")]
    NoRecord(String),
    /// A record exists but does not parse, or there are several (cached briefly).
    #[error("unusable TXT record at {name}: {reason}")]
    Invalid {
        /// The TXT name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The lookup failed or timed out (not cached).
    #[error("TXT lookup for {name} failed: {reason}")]
    LookupFailed {
        /// The TXT name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Too many lookups in flight (not cached).
    #[error("too many custom-domain lookups in flight")]
    Busy,
}

/// The records at one TXT name and the smallest TTL among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtAnswer {
    /// One string per record, its character-strings concatenated.
    pub records: Vec<String>,
    /// TTL of the answer.
    pub ttl: Duration,
}

/// A TXT lookup failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtError {
    /// NXDOMAIN or no TXT record.
    NotFound,
    /// Anything else (SERVFAIL, timeout, network).
    Failed(String),
}

/// A boxed, sendable future (what a [`TxtLookup`] returns).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Looks up TXT records. The real one is hickory; tests of the cache use a counting one.
pub trait TxtLookup: Send + Sync + Debug + 'static {
    /// All TXT records at the fully qualified `name`.
    fn lookup_txt(&self, name: String) -> BoxFuture<Result<TxtAnswer, TxtError>>;
}

/// hickory-resolver over TLS to `dns_over_tls`, else UDP/TCP to the configured servers or
/// `/etc/resolv.conf`.
#[derive(Debug)]
pub struct HickoryTxt(TokioResolver);

impl HickoryTxt {
    /// A resolver for `config.dns_over_tls`, else `config.nameservers`, else the system's.
    pub fn new(config: &CustomDomainsConfig) -> Result<HickoryTxt, String> {
        let builder = if !config.dns_over_tls.is_empty() {
            let mut servers = Vec::new();
            for s in &config.dns_over_tls {
                let (addr, name) = gatehouse_config::parse_dot_server(s)?;
                let mut ns = NameServerConfig::tls(addr.ip(), name.into());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                servers.push(ns);
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
            .with_tls_config(crate::client_tls::config(
                config.dns_tls_ca_file.as_deref(),
            )?)
        } else if config.nameservers.is_empty() {
            warn_plain_dns();
            TokioResolver::builder_tokio().map_err(|e| format!("system DNS config: {e}"))?
        } else {
            warn_plain_dns();
            TokioResolver::builder_with_config(
                gatehouse_caa::lookup::resolver_config(&config.nameservers),
                TokioRuntimeProvider::default(),
            )
        };
        let mut opts = ResolverOpts::default();
        opts.timeout = config.lookup_timeout;
        opts.attempts = 1;
        opts.cache_size = 0; // our moka cache is the one cache, with our TTL bounds
        let resolver = builder
            .with_options(opts)
            .build()
            .map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(HickoryTxt(resolver))
    }
}

fn warn_plain_dns() {
    tracing::warn!(
        "custom domains resolve over plain DNS: in a CVM the host answers it and can move a \
         custom domain to another app; set proxy.custom_domains.dns_over_tls"
    );
}

impl TxtLookup for HickoryTxt {
    fn lookup_txt(&self, name: String) -> BoxFuture<Result<TxtAnswer, TxtError>> {
        let resolver = self.0.clone();
        Box::pin(async move {
            match resolver.lookup(name.as_str(), RecordType::TXT).await {
                Ok(lookup) => {
                    let mut ttl = u32::MAX;
                    let mut records = Vec::new();
                    for r in lookup.answers() {
                        if let RData::TXT(txt) = &r.data {
                            ttl = ttl.min(r.ttl);
                            let joined: Vec<u8> = txt
                                .txt_data
                                .iter()
                                .flat_map(|s| s.iter().copied())
                                .collect();
                            records.push(String::from_utf8_lossy(&joined).into_owned());
                        }
                    }
                    if records.is_empty() {
                        return Err(TxtError::NotFound);
                    }
                    Ok(TxtAnswer {
                        records,
                        ttl: Duration::from_secs(u64::from(ttl)),
                    })
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => Err(TxtError::NotFound),
                Err(e) => Err(TxtError::Failed(e.to_string())),
            }
        })
    }
}

#[derive(Debug, Clone)]
struct Cached {
    answer: Result<CustomTarget, CustomDomainError>,
    ttl: Duration,
}

struct TtlExpiry;

impl moka::Expiry<Box<str>, Arc<Cached>> for TtlExpiry {
    fn expire_after_create(
        &self,
        _key: &Box<str>,
        value: &Arc<Cached>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The custom-domain resolver with its cache.
pub struct CustomDomains {
    config: CustomDomainsConfig,
    lookup: Arc<dyn TxtLookup>,
    cache: moka::future::Cache<Box<str>, Arc<Cached>>,
    in_flight: Arc<Semaphore>,
    /// Lookups in flight per zone (the domain's last two labels).
    per_zone: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Lookups run on this runtime (the control runtime that owns the resolver's sockets),
    /// whichever worker asks.
    runtime: tokio::runtime::Handle,
}

impl Debug for CustomDomains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomDomains")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl CustomDomains {
    /// A resolver using `lookup`, running lookups on `runtime`.
    pub fn new(
        config: CustomDomainsConfig,
        lookup: Arc<dyn TxtLookup>,
        runtime: tokio::runtime::Handle,
    ) -> CustomDomains {
        let cache = moka::future::Cache::builder()
            .max_capacity(config.cache_capacity)
            .expire_after(TtlExpiry)
            .build();
        let in_flight = Arc::new(Semaphore::new(config.max_concurrent_lookups));
        CustomDomains {
            config,
            lookup,
            cache,
            in_flight,
            per_zone: Arc::default(),
            runtime,
        }
    }

    /// Maps a lower-case domain to its target.
    pub async fn resolve(&self, domain: &str) -> Result<CustomTarget, CustomDomainError> {
        if !self.config.enabled {
            return Err(CustomDomainError::Disabled);
        }
        let cached = self
            .cache
            .try_get_with(domain.into(), self.fetch(domain))
            .await
            .map_err(|e| (*e).clone())?;
        cached.answer.clone()
    }

    /// The cached mappings: domain → target (or why it does not route), sorted.
    pub fn cached(&self) -> Vec<(String, Result<CustomTarget, CustomDomainError>)> {
        let mut all: Vec<_> = self
            .cache
            .iter()
            .map(|(k, v)| (k.to_string(), v.answer.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Forgets the cached mapping of `domain` and looks it up again.
    pub async fn relookup(&self, domain: &str) -> Result<CustomTarget, CustomDomainError> {
        self.cache.invalidate(domain).await;
        self.resolve(domain).await
    }

    async fn fetch(&self, domain: &str) -> Result<Arc<Cached>, CustomDomainError> {
        let name = format!("{}.{domain}.", self.config.txt_prefix);
        let zone_slot = ZoneSlot::take(&self.per_zone, domain, self.config.max_lookups_per_zone)
            .ok_or(CustomDomainError::Busy)?;
        let permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| CustomDomainError::Busy)?;
        let lookup = self.lookup.clone();
        let limit = self.config.lookup_timeout;
        let query = name.clone();
        let result = self
            .runtime
            .spawn(async move {
                let _permit = (permit, zone_slot);
                tokio::time::timeout(limit, lookup.lookup_txt(query)).await
            })
            .await;
        let failed = |reason: String| CustomDomainError::LookupFailed {
            name: name.clone(),
            reason,
        };
        let negative = |answer| {
            Ok(Arc::new(Cached {
                answer: Err(answer),
                ttl: self.config.negative_ttl,
            }))
        };
        // A failure is cached too (briefly): a zone that does not answer costs one lookup per
        // name per `failure_ttl`, not one per connection.
        let failure = |reason: String| {
            Ok(Arc::new(Cached {
                answer: Err(failed(reason)),
                ttl: self.config.failure_ttl,
            }))
        };
        match result {
            Err(e) => Err(failed(format!("lookup task: {e}"))),
            Ok(Err(_)) => failure(format!("no answer within {:?}", limit)),
            Ok(Ok(Err(TxtError::Failed(reason)))) => failure(reason),
            Ok(Ok(Err(TxtError::NotFound))) => negative(CustomDomainError::NoRecord(name.clone())),
            Ok(Ok(Ok(answer))) => match parse_records(&answer.records) {
                Ok(target) => Ok(Arc::new(Cached {
                    answer: Ok(target),
                    ttl: answer.ttl.clamp(self.config.min_ttl, self.config.max_ttl),
                })),
                Err(reason) => negative(CustomDomainError::Invalid {
                    name: name.clone(),
                    reason,
                }),
            },
        }
    }
}

/// One lookup slot of a zone, given back on drop.
struct ZoneSlot {
    zones: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    zone: String,
}

impl ZoneSlot {
    /// A slot under `domain`'s zone (its last two labels), if fewer than `max` are taken.
    fn take(
        zones: &Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
        domain: &str,
        max: usize,
    ) -> Option<ZoneSlot> {
        let zone = zone_of(domain).to_owned();
        let mut z = zones.lock().unwrap_or_else(|p| p.into_inner());
        let n = z.entry(zone.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ZoneSlot {
            zones: zones.clone(),
            zone,
        })
    }
}

impl Drop for ZoneSlot {
    fn drop(&mut self) {
        let mut z = self.zones.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = z.get_mut(&self.zone) {
            *n -= 1;
            if *n == 0 {
                z.remove(&self.zone);
            }
        }
    }
}

/// The zone a domain's lookups are counted under: its last two labels (a registrable domain
/// for most names; no public-suffix list is consulted).
fn zone_of(domain: &str) -> &str {
    let d = domain.trim_end_matches('.');
    match d.rmatch_indices('.').nth(1) {
        Some((i, _)) => &d[i + 1..],
        None => d,
    }
}

/// Exactly one record must be a valid target.
fn parse_records(records: &[String]) -> Result<CustomTarget, String> {
    match records {
        [one] => parse_target(one),
        _ => Err(format!(
            "{} TXT records, expected exactly one",
            records.len()
        )),
    }
}

/// Parses `<app-id>[:<port>][;mode=passthrough|terminate|h2]`.
pub fn parse_target(value: &str) -> Result<CustomTarget, String> {
    let value = value.trim();
    let (target, params) = match value.split_once(';') {
        Some((t, p)) => (t, Some(p)),
        None => (value, None),
    };
    let (app, port) = match target.split_once(':') {
        Some((a, p)) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|n| *n != 0 && n.to_string() == p)
                .ok_or_else(|| format!("port {p:?} is not 1-65535"))?;
            (a, Some(port))
        }
        None => (target, None),
    };
    if let Some(why) = app_id_problem(app) {
        return Err(format!("app id {why}"));
    }
    let mode = match params.map(str::trim) {
        None => Mode::Terminate,
        Some("mode=passthrough") => Mode::Passthrough,
        Some("mode=terminate") => Mode::Terminate,
        Some("mode=h2") => Mode::TerminateH2,
        Some(other) => return Err(format!("unknown parameter {other:?}")),
    };
    Ok(CustomTarget {
        app: app.to_owned(),
        port,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn target_grammar() {
        let t = |app: &str, port, mode| {
            Ok(CustomTarget {
                app: app.into(),
                port,
                mode,
            })
        };
        assert_eq!(
            parse_target("web:443"),
            t("web", Some(443), Mode::Terminate)
        );
        assert_eq!(parse_target(" web "), t("web", None, Mode::Terminate));
        assert_eq!(
            parse_target("web:8443;mode=passthrough"),
            t("web", Some(8443), Mode::Passthrough)
        );
        assert_eq!(
            parse_target("web;mode=h2"),
            t("web", None, Mode::TerminateH2)
        );
        for bad in [
            "web:0",
            "web:080",
            "web:x",
            "Web:80",
            "web:80;mode=x",
            "",
            ":80",
            "a:1:2",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert!(parse_records(&["a:1".into(), "b:2".into()]).is_err());
    }

    /// Counts lookups, answers from a table after a delay.
    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
        answers: Mutex<Vec<(String, Result<TxtAnswer, TxtError>)>>,
    }

    impl TxtLookup for Arc<Counting> {
        fn lookup_txt(&self, name: String) -> BoxFuture<Result<TxtAnswer, TxtError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = self
                .answers
                .lock()
                .unwrap()
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, a)| a.clone())
                .unwrap_or(Err(TxtError::NotFound));
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                answer
            })
        }
    }

    fn resolver(counting: &Arc<Counting>, config: CustomDomainsConfig) -> CustomDomains {
        CustomDomains::new(
            config,
            Arc::new(counting.clone()),
            tokio::runtime::Handle::current(),
        )
    }

    fn answer(value: &str, ttl: u64) -> Result<TxtAnswer, TxtError> {
        Ok(TxtAnswer {
            records: vec![value.into()],
            ttl: Duration::from_secs(ttl),
        })
    }

    #[tokio::test]
    async fn concurrent_connections_share_one_lookup() {
        let c = Arc::new(Counting::default());
        c.answers.lock().unwrap().push((
            "_gatehouse-app-address.x.example.".into(),
            answer("web:80", 300),
        ));
        let r = Arc::new(resolver(&c, CustomDomainsConfig::default()));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.resolve("x.example").await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().app, "web");
        }
        assert_eq!(c.calls.load(Ordering::SeqCst), 1);
        r.resolve("x.example").await.unwrap();
        assert_eq!(c.calls.load(Ordering::SeqCst), 1, "served from cache");
    }

    #[tokio::test]
    async fn ttl_is_clamped_and_negatives_expire() {
        let c = Arc::new(Counting::default());
        c.answers
            .lock()
            .unwrap()
            .push(("_p.short.example.".into(), answer("web", 0)));
        let config = CustomDomainsConfig {
            txt_prefix: "_p".into(),
            min_ttl: Duration::from_millis(300),
            negative_ttl: Duration::from_millis(200),
            ..Default::default()
        };
        let r = resolver(&c, config);
        r.resolve("short.example").await.unwrap();
        r.resolve("short.example").await.unwrap();
        assert_eq!(c.calls.load(Ordering::SeqCst), 1, "TTL 0 raised to min_ttl");
        tokio::time::sleep(Duration::from_millis(400)).await;
        r.resolve("short.example").await.unwrap();
        assert_eq!(c.calls.load(Ordering::SeqCst), 2, "expired after min_ttl");

        assert!(matches!(
            r.resolve("none.example").await,
            Err(CustomDomainError::NoRecord(_))
        ));
        assert!(r.resolve("none.example").await.is_err());
        assert_eq!(c.calls.load(Ordering::SeqCst), 3, "negative answer cached");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(r.resolve("none.example").await.is_err());
        assert_eq!(c.calls.load(Ordering::SeqCst), 4, "negative answer expired");
    }

    /// Issue 16 §9: a failure (SERVFAIL, timeout) is cached for `failure_ttl`, then asked
    /// again; lookups are bounded overall.
    #[tokio::test]
    async fn hardening_failures_are_cached_briefly_and_lookups_are_bounded() {
        let c = Arc::new(Counting::default());
        c.answers.lock().unwrap().push((
            "_gatehouse-app-address.f.example.".into(),
            Err(TxtError::Failed("SERVFAIL".into())),
        ));
        let config = CustomDomainsConfig {
            max_concurrent_lookups: 1,
            failure_ttl: Duration::from_millis(200),
            ..Default::default()
        };
        let r = Arc::new(resolver(&c, config));
        assert!(matches!(
            r.resolve("f.example").await,
            Err(CustomDomainError::LookupFailed { .. })
        ));
        assert!(r.resolve("f.example").await.is_err());
        assert_eq!(c.calls.load(Ordering::SeqCst), 1, "failure cached");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(r.resolve("f.example").await.is_err());
        assert_eq!(c.calls.load(Ordering::SeqCst), 2, "failure expired");
        let r2 = r.clone();
        let slow = tokio::spawn(async move { r2.resolve("a.example").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(r.resolve("b.example").await, Err(CustomDomainError::Busy));
        assert!(slow.await.unwrap().is_err());
    }

    /// Issue 16 §9: names under one zone hold at most `max_lookups_per_zone` slots; another
    /// zone is still looked up meanwhile.
    #[tokio::test]
    async fn hardening_one_zone_cannot_take_every_lookup_slot() {
        let c = Arc::new(Counting::default());
        let config = CustomDomainsConfig {
            max_lookups_per_zone: 2,
            ..Default::default()
        };
        let r = Arc::new(resolver(&c, config));
        let slow: Vec<_> = (0..2)
            .map(|i| {
                let r = r.clone();
                tokio::spawn(async move { r.resolve(&format!("n{i}.blackhole.example")).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            r.resolve("n9.blackhole.example").await,
            Err(CustomDomainError::Busy)
        );
        assert!(matches!(
            r.resolve("shop.other.example").await,
            Err(CustomDomainError::NoRecord(_))
        ));
        for t in slow {
            assert!(t.await.unwrap().is_err());
        }
        assert_eq!(zone_of("a.b.shop.example.org."), "example.org");
        assert_eq!(zone_of("localhost"), "localhost");
    }
}
