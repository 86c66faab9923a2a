//! Custom domains: `<txt_prefix>.<domain>  TXT  "<app-id>[:<port>][;mode=passthrough|terminate|h2]"`.
//!
//! Answers are cached in `moka` for the record's TTL clamped to `[min_ttl, max_ttl]`; "no such
//! record" and unusable records for `negative_ttl`; lookup failures (timeout, SERVFAIL) are not
//! cached. Concurrent connections for one uncached name share one lookup (`try_get_with`), and
//! at most `max_concurrent_lookups` run at once across all names (random-SNI floods).

use super::name::Mode;
use gatehouse_config::{app_id_problem, CustomDomainsConfig};
use hickory_resolver::config::ResolverOpts;
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

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Looks up TXT records. The real one is hickory; tests of the cache use a counting one.
pub trait TxtLookup: Send + Sync + Debug + 'static {
    /// All TXT records at the fully qualified `name`.
    fn lookup_txt(&self, name: String) -> BoxFuture<Result<TxtAnswer, TxtError>>;
}

/// hickory-resolver over UDP/TCP to the configured servers or `/etc/resolv.conf`.
#[derive(Debug)]
pub struct HickoryTxt(TokioResolver);

impl HickoryTxt {
    /// A resolver for `config.nameservers`, or the system's when empty.
    pub fn new(config: &CustomDomainsConfig) -> Result<HickoryTxt, String> {
        let builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| format!("system DNS config: {e}"))?
        } else {
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

    async fn fetch(&self, domain: &str) -> Result<Arc<Cached>, CustomDomainError> {
        let name = format!("{}.{domain}.", self.config.txt_prefix);
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
                let _permit = permit;
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
        match result {
            Err(e) => Err(failed(format!("lookup task: {e}"))),
            Ok(Err(_)) => Err(failed(format!("no answer within {:?}", limit))),
            Ok(Ok(Err(TxtError::Failed(reason)))) => Err(failed(reason)),
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

    #[tokio::test]
    async fn failures_are_not_cached_and_lookups_are_bounded() {
        let c = Arc::new(Counting::default());
        c.answers.lock().unwrap().push((
            "_gatehouse-app-address.f.example.".into(),
            Err(TxtError::Failed("SERVFAIL".into())),
        ));
        let config = CustomDomainsConfig {
            max_concurrent_lookups: 1,
            ..Default::default()
        };
        let r = Arc::new(resolver(&c, config));
        assert!(matches!(
            r.resolve("f.example").await,
            Err(CustomDomainError::LookupFailed { .. })
        ));
        assert!(r.resolve("f.example").await.is_err());
        assert_eq!(c.calls.load(Ordering::SeqCst), 2, "failure not cached");
        let r2 = r.clone();
        let slow = tokio::spawn(async move { r2.resolve("a.example").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(r.resolve("b.example").await, Err(CustomDomainError::Busy));
        assert!(slow.await.unwrap().is_err());
    }
}
